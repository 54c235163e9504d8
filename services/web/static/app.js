// Small progressive enhancements; every page works without this file (live updates aside).
"use strict";

// The status order is the contract's (services/contracts/statuses.py), written into every page.
const RANK = JSON.parse(document.documentElement.dataset.statusOrder || "{}");
const FINAL_RANK = Math.max(...Object.values(RANK));
const isFinal = (status) => RANK[status] === FINAL_RANK;

// Actions are POSTs confirmed in the UI. Without JS the server asks on a confirmation page.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (!form) return;
  if (!window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  let field = form.querySelector("input[name=confirm]");
  if (!field) {
    field = document.createElement("input");
    field.type = "hidden";
    field.name = "confirm";
    form.appendChild(field);
  }
  field.value = "yes";
});

function badge(info) {
  const outer = document.createElement("span");
  outer.className = "badge badge-" + info.css;
  outer.title = "Status: " + info.label;
  const icon = document.createElement("span");
  icon.className = "badge-icon";
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = info.icon;
  outer.append(icon, info.label);
  return outer;
}

function setField(root, name, value) {
  const cell = root.querySelector('[data-field="' + name + '"]');
  if (!cell || value === null || value === undefined) return;
  if (value instanceof Node) cell.replaceChildren(value);
  else cell.textContent = value;
}

// A later status never goes back (events may arrive after a newer one was rendered).
function advances(element, status) {
  const shown = element.dataset.status;
  return shown === undefined || RANK[status] >= RANK[shown];
}

// A live stream that never misses an event: the server replays what came after `resume` (the
// last event id this page has), then goes live. The browser's own reconnection sends that id as
// Last-Event-ID; when it gives up (the stream answered with an error), we reconnect ourselves.
const LIVE_TEXT = { connecting: "Connecting…", connected: "Connection established", reconnecting: "Reconnecting…" };

function liveState(state) {
  document.documentElement.dataset.live = state;
  for (const element of document.querySelectorAll("[data-live-state]")) element.textContent = LIVE_TEXT[state];
}

function listen(url, resumeParam, resume, handlers) {
  if (!window.EventSource) return null;
  const stream = { source: null, last: resume, closed: false, retry: 1000 };
  stream.close = () => { stream.closed = true; if (stream.source) stream.source.close(); };
  const open = () => {
    if (stream.closed) return;
    const separator = url.includes("?") ? "&" : "?";
    const source = new EventSource(stream.last ? url + separator + resumeParam + "=" + encodeURIComponent(stream.last) : url);
    stream.source = source;
    liveState(stream.last && stream.opened ? "reconnecting" : "connecting");
    stream.opened = true;
    // The server's first event: from now on this page is following (tests and styles use it).
    source.addEventListener("hello", () => { stream.retry = 1000; liveState("connected"); });
    source.addEventListener("error", () => {
      if (stream.closed) return;
      liveState("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(open, stream.retry);
        stream.retry = Math.min(stream.retry * 2, 30000);
      }
    });
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (message) => {
        if (message.lastEventId) stream.last = message.lastEventId;
        handle(JSON.parse(message.data), stream);
      });
    }
  };
  open();
  return stream;
}

// The index: rows of processing runs change in place; new runs appear on top of the first page.
function liveIndex(table) {
  const body = table.tBodies[0];
  const insert = table.dataset.liveInsert === "yes";
  listen(table.dataset.liveRuns, "since", table.dataset.since, {
    run(update) {
      let row = body.querySelector('tr[data-run="' + CSS.escape(update.name) + '"]');
      if (!row) {
        if (!insert || update.insert === false) return;
        row = newRow(update);
        body.prepend(row);
      }
      if (!advances(row, update.status)) return;
      row.dataset.status = update.status;
      if (update.started_iso) row.dataset.started = update.started_iso;
      row.dataset.state = update.state || update.status;
      row.className = "run-row state-" + row.dataset.state + " just-updated";
      setField(row, "badge", badge(update.badge));
      setField(row, "started", update.started);
      setField(row, "duration", update.duration || elapsed(row, update));
      setField(row, "summary", update.summary || (update.status === "processing" ? "Running…" : null));
    },
  });
}

function newRow(update) {
  const row = document.createElement("tr");
  row.dataset.run = update.name;
  const link = document.createElement("a");
  link.href = update.url;
  link.textContent = update.name;
  const cells = [["mono", null, link], ["", null, update.job], ["", "badge", ""], ["nowrap", "started", update.created || ""],
    ["num nowrap", "duration", "—"], ["summary", "summary", "Waiting to start"]];
  for (const [css, field, content] of cells) {
    const cell = document.createElement("td");
    if (css) cell.className = css;
    if (field) cell.dataset.field = field;
    cell.append(content);
    row.appendChild(cell);
  }
  return row;
}

// A run page: the header follows the status; new and updated messages stream in.
function liveRun(head) {
  if (isFinal(head.dataset.status)) return;
  const list = document.querySelector("ol[data-details]");
  const count = document.querySelector('[data-field="message-count"]');
  listen("/runs/" + encodeURIComponent(head.dataset.liveRun) + "/events", "after", head.dataset.lastSeq, {
    run(update, source) {
      if (!advances(head, update.status)) return;
      head.dataset.status = update.status;
      if (update.started_iso) head.dataset.started = update.started_iso;
      setField(head, "badge", badge(update.badge));
      setField(document, "status", update.badge.label);
      setField(document, "finished", update.finished);
      setField(document, "duration", update.duration || elapsed(head, update));
      setField(document, "summary", update.summary);
      if (isFinal(update.status)) {
        source.close();
        const note = document.createElement("p");
        note.className = "notice";
        note.setAttribute("role", "status");
        const again = document.createElement("a");
        again.href = window.location.pathname;
        again.textContent = "Reload for the final statistics";
        note.append("This run has finished. ", again, ".");
        head.after(note);
      }
    },
    step(step) {
      if (!list) return;
      let item = list.querySelector('li[data-key="' + CSS.escape(step.key) + '"]');
      if (!item) {
        if (list.dataset.complete !== "yes") return; // it belongs after messages not loaded yet
        item = document.createElement("li");
        item.dataset.key = step.key;
        item.id = "m" + (step.first_seq || step.seq);
        item.dataset.seq = step.first_seq || step.seq;
        const when = document.createElement("span");
        when.className = "when";
        const time = document.createElement("time");
        time.dateTime = step.iso;
        time.textContent = step.at;
        when.append(time);
        const level = document.createElement("span");
        level.className = "level";
        const text = document.createElement("span");
        text.className = "message";
        const tools = document.createElement("span");
        tools.className = "detail-tools";
        const link = document.createElement("a");
        link.className = "permalink";
        link.title = "Link to this message";
        link.dataset.copyLink = "";
        link.href = window.location.pathname + "?at=" + item.dataset.seq + "#m" + item.dataset.seq;
        link.textContent = "#" + item.dataset.seq;
        tools.append(link);
        item.append(when, level, text, tools);
        list.appendChild(item);
        const empty = document.querySelector("[data-empty]");
        if (empty) empty.remove();
        if (count) {
          count.dataset.count = Number(count.dataset.count) + 1;
          count.textContent = Number(count.dataset.count).toLocaleString("en-US");
        }
      }
      if (step.seq > Number(item.dataset.seq)) {
        // Updated in place: it keeps the time it was first logged, and says when it changed.
        let note = item.querySelector(".updated");
        if (!note) {
          note = document.createElement("small");
          note.className = "updated";
          item.querySelector(".when").append(note);
        }
        const time = document.createElement("time");
        time.dateTime = step.updated_iso || step.iso;
        time.textContent = step.clock;
        note.replaceChildren("updated ", time);
      }
      item.className = "detail level-" + step.level + " just-updated";
      item.querySelector(".level").textContent = step.level;
      item.querySelector(".message").textContent = step.message;
    },
  });
}

// "Load more": fetch the next page of messages and append it here; automatic when scrolled near.
async function loadMore(link) {
  if (link.dataset.loading) return;
  link.dataset.loading = "yes";
  link.textContent = "Loading…";
  const response = await fetch(link.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
  if (!response.ok) {
    window.location.href = link.href;
    return;
  }
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const list = document.querySelector("ol[data-details]");
  const more = page.querySelector("ol[data-details]");
  if (list && more) {
    list.append(...more.children);
    list.dataset.complete = more.dataset.complete;
  }
  const pager = link.closest("nav");
  const next = page.querySelector("nav.load-more");
  if (next) {
    pager.replaceWith(document.importNode(next, true));
    watchLoadMore();
  } else {
    pager.remove();
  }
}

function watchLoadMore() {
  const link = document.querySelector("a[data-load-more]");
  if (!link) return;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    loadMore(link);
  });
  if ("IntersectionObserver" in window) {
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) {
        observer.disconnect();
        loadMore(link);
      }
    }, { rootMargin: "600px" });
    observer.observe(link);
  }
}

// A finished run without a reported duration (its worker was lost): start to finish, as the server shows it.
function elapsed(element, update) {
  if (!update.finished_iso || !element.dataset.started) return null;
  const ms = Date.parse(update.finished_iso) - Date.parse(element.dataset.started);
  return Number.isNaN(ms) ? null : formatDuration(Math.max(0, ms));
}

// Durations of processing runs count up (the same format as the server's).
function formatDuration(ms) {
  if (ms < 1000) return ms + " ms";
  const seconds = ms / 1000;
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const whole = Math.floor(seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return hours ? hours + " h " + pad(minutes) + " min" : minutes + " min " + pad(whole % 60) + " s";
}

window.setInterval(() => {
  for (const element of document.querySelectorAll('[data-status="processing"][data-started]')) {
    const started = Date.parse(element.dataset.started);
    if (Number.isNaN(started)) continue;
    const scope = element.matches("tr") ? element : document;
    setField(scope, "duration", formatDuration(Math.max(0, Date.now() - started)));
  }
}, 1000);

const runsTable = document.querySelector("table[data-live-runs]");
if (runsTable) liveIndex(runsTable);
const emptyIndex = document.querySelector("[data-live-empty]");
if (emptyIndex) listen(emptyIndex.dataset.liveEmpty, "since", null, { run: () => window.location.reload() });
const runHead = document.querySelector("[data-live-run]");
if (runHead) liveRun(runHead);
watchLoadMore();

// The Jobs Monitor, live: on every run event of the index's feed (debounced), and every few seconds for
// heartbeats, the recorder's lag and alerts, its body is replaced by the server's rendering of it.
function liveMonitor(container) {
  let timer = null;
  let busy = false;
  const refresh = async () => {
    timer = null;
    if (busy) { schedule(300); return; }
    busy = true;
    try {
      const response = await fetch(container.dataset.liveMonitor, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (response.ok) {
        // Only the sections that changed are replaced: the rest (and what the user is looking at) stays put.
        const fresh = document.createElement("template");
        fresh.innerHTML = await response.text();
        const now = Array.from(fresh.content.children);
        const shown = Array.from(container.children);
        if (now.length !== shown.length) {
          container.replaceChildren(...now);
        } else {
          now.forEach((section, i) => { if (section.outerHTML !== shown[i].outerHTML) shown[i].replaceWith(section); });
        }
        container.dataset.refreshed = String(Number(container.dataset.refreshed || 0) + 1);
      }
    } catch (error) {
      // The server is away: the next tick tries again.
    } finally {
      busy = false;
    }
  };
  const schedule = (delay) => { if (timer === null) timer = window.setTimeout(refresh, delay); };
  listen(container.dataset.liveRunsFeed, "since", null, { run: () => schedule(250) });
  window.setInterval(() => schedule(0), 5000);
}

const monitorBody = document.querySelector("[data-live-monitor]");
if (monitorBody) liveMonitor(monitorBody);

// Run page tools: the level filter submits itself; find within the loaded messages (highlight,
// next/previous); every message's link is copied on click; a bare #m17 loads the page it is on.
function levelFilter() {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
}

function findInRun() {
  const input = document.querySelector("[data-find-input]");
  const list = document.querySelector("ol[data-details]");
  if (!input || !list) return;
  for (const element of document.querySelectorAll("[data-find]")) element.hidden = false;
  const counter = document.querySelector("[data-find-count]");
  let marks = [];
  let current = -1;
  const clear = () => {
    for (const mark of list.querySelectorAll("mark[data-found]")) mark.replaceWith(document.createTextNode(mark.textContent));
    list.normalize();
    marks = [];
    current = -1;
  };
  const show = (index) => {
    if (!marks.length) return;
    if (current >= 0) marks[current].classList.remove("find-current");
    current = (index + marks.length) % marks.length;
    marks[current].classList.add("find-current");
    marks[current].scrollIntoView({ block: "center" });
    counter.textContent = (current + 1) + " of " + marks.length;
  };
  const find = () => {
    clear();
    const wanted = input.value.trim().toLowerCase();
    if (!wanted) { counter.textContent = ""; return; }
    for (const text of list.querySelectorAll(".message")) {
      const walker = document.createTreeWalker(text, NodeFilter.SHOW_TEXT);
      const nodes = [];
      while (walker.nextNode()) nodes.push(walker.currentNode);
      for (const node of nodes) {
        let rest = node;
        let at = rest.data.toLowerCase().indexOf(wanted);
        while (at >= 0) {
          const hit = rest.splitText(at);
          rest = hit.splitText(wanted.length);
          const mark = document.createElement("mark");
          mark.dataset.found = "yes";
          mark.textContent = hit.data;
          hit.replaceWith(mark);
          marks.push(mark);
          at = rest.data.toLowerCase().indexOf(wanted);
        }
      }
    }
    counter.textContent = marks.length ? "" : "No match in the messages loaded";
    if (marks.length) show(0);
  };
  let timer = null;
  input.addEventListener("input", () => { window.clearTimeout(timer); timer = window.setTimeout(find, 150); });
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    if (!marks.length) find(); else show(current + (event.shiftKey ? -1 : 1));
  });
  document.querySelector("[data-find-next]").addEventListener("click", () => show(current + 1));
  document.querySelector("[data-find-prev]").addEventListener("click", () => show(current - 1));
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-copy-link]");
  if (!link || !navigator.clipboard || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  // A plain click copies the link and marks the message here; other clicks (new tab) follow it.
  event.preventDefault();
  const url = new URL(link.getAttribute("href"), window.location.href);
  for (const marked of document.querySelectorAll(".detail.targeted")) marked.classList.remove("targeted");
  link.closest(".detail").classList.add("targeted");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  navigator.clipboard.writeText(url.href).then(() => {
    link.classList.add("copied");
    window.setTimeout(() => link.classList.remove("copied"), 1500);
  }, () => {});
});

function deepLink() {
  const match = /^#m(\d+)$/.exec(window.location.hash);
  if (!match || !document.querySelector("ol[data-details]")) return;
  const target = document.getElementById("m" + match[1]);
  if (target) {
    target.classList.add("targeted");
    target.scrollIntoView({ block: "center" });
    return;
  }
  const params = new URLSearchParams(window.location.search);
  if (params.get("at") === match[1]) return; // the server's page has no such message
  params.set("at", match[1]);
  params.delete("after");
  window.location.replace(window.location.pathname + "?" + params.toString() + window.location.hash);
}

levelFilter();
findInRun();
deepLink();
