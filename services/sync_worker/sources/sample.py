"""Realistic open orders, deterministic per seed: the shipped sample, tests and benchmarks."""
from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

COLUMNS = [
    "order_number", "customer_code", "customer_name", "status", "order_date",
    "requested_ship_date", "warehouse", "currency", "total_amount", "line_count", "updated_at",
]

CUSTOMERS = [
    ("C-10021", "Acme Industrial Supply"), ("C-10034", "Baltic Marine Parts"),
    ("C-10057", "Cordoba Foods S.A."), ("C-10063", "Delta Hydraulics GmbH"),
    ("C-10078", "Evergreen Garden Centres"), ("C-10082", "Fjord Outdoor AS"),
    ("C-10095", "Granite State Builders"), ("C-10101", "Harbor Medical Devices"),
    ("C-10117", "Iberia Textiles"), ("C-10126", "Juniper Office Furniture"),
    ("C-10139", "Kestrel Aerospace Components"), ("C-10144", "Lakeside Hospitality Group"),
    ("C-10158", "Meridian Electrical Wholesale"), ("C-10163", "Northwind Traders"),
    ("C-10171", "Orchard Valley Cooperative"), ("C-10186", "Pacific Rim Logistics"),
    ("C-10192", "Quarry Road Ceramics"), ("C-10205", "Riverside Auto Parts"),
    ("C-10213", "Sierra Solar Installers"), ("C-10228", "Tundra Cold Storage"),
]
STATUSES = ["open", "open", "open", "released", "released", "picking", "partially_shipped", "on_hold"]
WAREHOUSES = ["BCN-01", "RTM-02", "CHI-01", "ATL-03", "SIN-01"]
CURRENCIES = ["EUR", "EUR", "USD", "USD", "USD", "GBP"]


def generate_orders(count: int, seed: int = 42, start: int = 100_000) -> Iterator[dict[str, str]]:
    """count orders as CSV-ready strings."""
    rng = random.Random(seed)
    today = date(2026, 11, 27)
    for i in range(count):
        code, customer = CUSTOMERS[rng.randrange(len(CUSTOMERS))]
        ordered = today - timedelta(days=rng.randrange(0, 60))
        lines = rng.randint(1, 24)
        yield {
            "order_number": f"SO-{start + i}",
            "customer_code": code,
            "customer_name": customer,
            "status": rng.choice(STATUSES),
            "order_date": ordered.isoformat(),
            "requested_ship_date": (ordered + timedelta(days=rng.randint(2, 30))).isoformat(),
            "warehouse": rng.choice(WAREHOUSES),
            "currency": rng.choice(CURRENCIES),
            "total_amount": f"{lines * rng.uniform(12, 900):.2f}",
            "line_count": str(lines),
            "updated_at": datetime.combine(ordered, datetime.min.time(), timezone.utc)
            .replace(hour=rng.randrange(6, 20), minute=rng.randrange(60))
            .isoformat(),
        }


def write_csv(path: Path, rows: Iterator[dict[str, str]] | list[dict[str, str]]) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def shipped_sample() -> list[dict[str, str]]:
    """The sample under data/: 320 orders, two of which an ERP export typically gets wrong."""
    rows = list(generate_orders(320))
    rows[57]["customer_name"] = ""
    rows[211]["total_amount"] = "-118.40"
    return rows


if __name__ == "__main__":
    write_csv(Path(__file__).parents[1] / "data" / "sample_open_orders.csv", shipped_sample())
