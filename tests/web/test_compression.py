"""Cached pages go to a browser gzip-encoded, compressed once per page: ten times fewer bytes for the index."""
from __future__ import annotations

import gzip

import pytest

from services.web.cache import Page
from services.web.pages import accepts_gzip
from tests.web.helpers_investigate import order_run
from tests.web.test_run_page_cache import settled


async def raw(client, path: str, **headers: str):  # type: ignore[no-untyped-def]
    """The response as sent (not decompressed by the client) and its bytes."""
    response = await client.get(path, headers=headers, auto_decompress=False)
    return response, await response.read()


@pytest.mark.parametrize("path", ["/", "/runs/20261201080000", "/jobs/sync_open_orders", "/failures"])
async def test_a_page_asked_with_gzip_is_the_same_page_gzip_encoded_and_says_it_varies(client, project, db, path):
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"]))
    await settled(client, db)

    plain, body = await raw(client, path, **{"Accept-Encoding": "identity"})
    packed, packed_body = await raw(client, path, **{"Accept-Encoding": "gzip, deflate, br"})
    assert plain.status == packed.status == 200
    assert "Content-Encoding" not in plain.headers and packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed_body) == body and len(packed_body) < len(body)
    assert "Accept-Encoding" in plain.headers["Vary"] and "Accept-Encoding" in packed.headers["Vary"]
    assert packed.headers["Content-Type"].startswith("text/html")


async def test_each_encoding_of_a_run_page_has_its_own_etag_and_its_own_304(client, project, db):
    await project(order_run("20261201080000", orders=["SO-1"]))
    await settled(client, db)

    plain, _ = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": "identity"})
    packed, _ = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": "gzip"})
    assert plain.headers["ETag"] != packed.headers["ETag"]
    assert packed.headers["Vary"] == "Authorization, Accept-Encoding"

    again, body = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]})
    assert again.status == 304 and body == b"" and again.headers["ETag"] == packed.headers["ETag"]
    # The other encoding's tag is another representation: the whole page, as asked.
    other, body = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": "gzip", "If-None-Match": plain.headers["ETag"]})
    assert other.status == 200 and other.headers["Content-Encoding"] == "gzip" and gzip.decompress(body)


@pytest.mark.parametrize("encoding", ["identity", ""])
async def test_a_client_that_takes_no_gzip_revalidates_the_plain_page_with_a_304(client, project, db, encoding):
    """curl, wget, or a reverse proxy that strips Accept-Encoding before the web."""
    await project(order_run("20261201080000", orders=["SO-1"]))
    await settled(client, db)
    plain, _ = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": encoding})
    for tag in (plain.headers["ETag"], "*"):
        again, body = await raw(client, "/runs/20261201080000", **{"Accept-Encoding": encoding, "If-None-Match": tag})
        assert again.status == 304 and body == b"" and "Content-Encoding" not in again.headers
    head = await client.head("/runs/20261201080000", headers={"Accept-Encoding": encoding, "If-None-Match": plain.headers["ETag"]})
    assert head.status == 304


@pytest.mark.parametrize(("header", "gzipped"), [
    ("gzip", True), ("gzip, deflate, br, zstd", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True), ("x-gzip", True),
    ("", False), ("identity", False), ("br", False), ("gzip;q=0", False), ("gzip;q=0.0, *", False),
    ("*;q=0, gzip", True), ("*;q=0", False), ("GZIP", True), ("gzip;q=nonsense", False),
])
def test_accept_encoding_is_read_as_http_says(header, gzipped):
    assert accepts_gzip(header) is gzipped


def test_a_page_is_compressed_once_whoever_asks():
    page = Page(b"<html>" + b"x" * 10_000 + b"</html>", '"tag"')
    first = page.gzipped()
    assert page.gzipped() is first and gzip.decompress(first) == page.body
    assert page.gzip_etag == '"tag-gzip"'
