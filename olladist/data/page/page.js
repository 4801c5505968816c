// olladist status page: draws /olladist/v1/cluster and asks again every refresh_s seconds.
// Built with the DOM API and textContent only, so nothing a peer reports can become markup.
"use strict";

const CLUSTER_URL = "/olladist/v1/cluster";
const STATE_CLASS = {
  ok: "ok", drift: "warn", degraded: "warn", starting: "warn",
  error: "bad", refused: "bad", unreachable: "bad", "no-peer-port": "muted",
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function when(t) {
  if (!t) return "never";
  const ago = Math.max(0, Date.now() / 1000 - t);
  const iso = new Date(t * 1000).toISOString().replace(".000", "").replace("T", " ").replace("Z", " UTC");
  let rel;
  if (ago < 90) rel = `${Math.round(ago)} s ago`;
  else if (ago < 5400) rel = `${Math.round(ago / 60)} min ago`;
  else rel = `${(ago / 3600).toFixed(1)} h ago`;
  return `${rel} (${iso})`;
}

function short(commit) {
  return commit ? String(commit).slice(0, 12) : "none";
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function table(id, head, rows, empty) {
  const t = document.getElementById(id);
  t.replaceChildren();
  if (!rows.length) {
    t.append(el("tbody", {}, el("tr", {}, el("td", { class: "none" }, empty))));
    return;
  }
  t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))));
  t.append(el("tbody", {}, ...rows));
}

function nodeCard(n) {
  const cls = STATE_CLASS[n.state] || "muted";
  const facts = [["state", n.state_text]];
  if (n.reachable) {
    facts.push(["applied", short(n.applied_commit)], ["attempted", short(n.attempted_commit)]);
    facts.push(["last run", when(n.last_run_at)]);
    if (n.busy) facts.push(["working on", `${n.busy.reason}, since ${when(n.busy.since)}`]);
    const up = n.instances.filter((i) => i.up).length;
    facts.push(["instances", `${up} of ${n.instances.length} up`]);
  } else {
    facts.push(["commit", "unknown: no answer"]);
    facts.push(["last seen", n.last_seen ? when(n.last_seen) : "not since this page's node started"]);
  }
  if (n.address) facts.push(["address", n.address]);
  const dl = el("dl", {});
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  return el(
    "article",
    { class: `card card-${cls}`, "data-node": n.name, "data-state": n.state },
    el("h3", {}, n.name, n.viewer ? " (this node) " : " ", el("span", { class: `state ${cls}` }, n.state)),
    dl,
  );
}

function placementCell(c) {
  const td = el("td", { class: "cell" });
  const words = [];
  if (c.placed) words.push(["placed", "ok"]);
  if (c.present === null) words.push(["unknown", "muted"]);
  else {
    if (c.present) words.push([c.placed ? "present" : "present, not placed", c.placed ? "ok" : "warn"]);
    else if (c.placed) words.push(["not present", "bad"]);
    if (c.loaded) words.push(["loaded", "ok"]);
    if (c.serving) words.push(["serving", "ok"]);
    else if (c.placed) words.push(["not serving", "bad"]);
  }
  if (!words.length) words.push(["\u2014", "muted"]);
  for (const [w, cls] of words) td.append(el("span", { class: cls }, w));
  td.dataset.placed = String(c.placed);
  td.dataset.present = String(c.present);
  td.dataset.loaded = String(c.loaded);
  td.dataset.serving = String(c.serving);
  return td;
}

function draw(view) {
  document.getElementById("cluster").textContent = view.cluster || "cluster";
  document.title = `olladist ${view.cluster || ""}: ${view.summary.unreachable ? view.summary.unreachable + " unreachable" : "all nodes answer"}`;
  document.getElementById("meta").textContent =
    `As node ${view.viewer} sees it, commit ${short(view.commit)}, built ${when(view.generated_at)}` +
    ` in ${view.build_s ?? "?"} s; refreshes every ${refreshSeconds(view)} s.`;

  const s = view.summary;
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    el("li", {}, `${s.nodes} nodes, ${s.reachable} answering`),
    el("li", { class: s.unreachable ? "bad" : "ok" }, `${s.unreachable} unreachable`),
    el("li", { class: s.drift_items ? "warn" : "ok" }, `${s.drift_items} drift items`),
    el("li", { class: s.errors ? "bad" : "ok" }, `${s.errors} errors`),
    el("li", {}, `${s.transfers} transfers in progress`),
  );

  document.getElementById("nodes").replaceChildren(...view.nodes.map(nodeCard));

  const inst = [];
  for (const n of view.nodes) {
    if (!n.reachable) {
      inst.push(el("tr", { "data-node": n.name }, el("td", {}, n.name), el("td", { colspan: 5, class: "bad" }, "node unreachable: instances unknown")));
      continue;
    }
    for (const i of n.instances) {
      inst.push(el("tr", { "data-node": n.name, "data-instance": i.name },
        el("td", {}, n.name), el("td", {}, i.name),
        el("td", { class: i.up ? "ok" : "bad" }, i.up ? `up (${i.status})` : `not up (${i.status})`),
        el("td", {}, i.sessions), el("td", {}, i.queued), el("td", {}, i.check || "no check")));
    }
  }
  table("instances", ["node", "instance", "health", "sessions", "queued", "last check"], inst, "no instances");

  const names = view.nodes.map((n) => n.name);
  const prow = view.models.map((m) => el("tr", { "data-model": m.name },
    el("th", { scope: "row" }, m.name, m.in_spec ? null : el("span", { class: "warn" }, " (not in the spec)")),
    ...names.map((n) => {
      const td = placementCell(m.nodes[n]);
      td.dataset.node = n;
      return td;
    })));
  table("placement", ["model", ...names], prow, "the spec has no models");

  table("transfers", ["node", "model", "step", "progress", "rate"], view.transfers.map((t) => {
    const pct = t.total ? Math.round((100 * t.completed) / t.total) : null;
    return el("tr", {}, el("td", {}, t.node), el("td", {}, t.model), el("td", {}, t.status),
      el("td", {}, t.total ? el("progress", { max: t.total, value: t.completed }) : null,
        t.total ? ` ${pct}%: ${bytes(t.completed)} of ${bytes(t.total)}` : "size not known yet"),
      el("td", {}, `${bytes(t.rate_bps)}/s`));
  }), "none: no model is being pulled");

  table("drift", ["node", "action", "target", "reason"], view.drift.map((d) =>
    el("tr", {}, el("td", {}, d.node), el("td", {}, d.kind), el("td", { class: "mono" }, d.target), el("td", {}, d.reason))),
  "none: every answering node matches its commit");

  table("errors", ["node", "error", "hint"], view.errors.map((e) =>
    el("tr", {}, el("td", {}, e.node), el("td", { class: "bad" }, e.message), el("td", {}, e.hint || ""))),
  "none in the last reconcile of any answering node");

  const rollout = document.getElementById("rollout");
  const ro = view.nodes.filter((n) => n.rollout !== null && n.rollout !== undefined);
  rollout.replaceChildren(ro.length
    ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "node"), el("th", {}, "rollout state"))),
        el("tbody", {}, ...ro.map((n) => el("tr", {}, el("td", {}, n.name),
          el("td", { class: "mono" }, typeof n.rollout === "string" ? n.rollout : JSON.stringify(n.rollout)))))))
    : el("p", { class: "none" }, "no rollout in progress (no node reports one)"));

  const live = document.getElementById("live");
  const withLive = view.nodes.filter((n) => n.live);
  live.replaceChildren(withLive.length
    ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "node"), el("th", {}, "live view"))),
        el("tbody", {}, ...withLive.map((n) => el("tr", {}, el("td", {}, n.name), el("td", {}, liveSummary(n.live)))))))
    : el("p", { class: "none" }, "no node serves a live view (/olladist/v1/live) yet; the table above comes from the reconcilers"));
}

function liveSummary(live) {
  // The live view's shape is the gateway's (docs/gateway.md); read what is there, skip the rest.
  const parts = [];
  const name = (e) => (e && (e.model || e.name || (e.entry && (e.entry.model || e.entry.name)))) || "?";
  if (Array.isArray(live.instances)) {
    const flight = live.instances.reduce((n, i) => n + (Number(i.in_flight) || 0), 0);
    const ready = live.instances.filter((i) => i.ready).length;
    parts.push(`${live.instances.length} instances, ${ready} ready, ${flight} requests in flight`);
  }
  if (Array.isArray(live.models)) parts.push(`${live.models.length} models present`);
  if (Array.isArray(live.loaded)) {
    const names = live.loaded.map((l) => `${name(l)}${l.instance ? " on " + l.instance : ""}`);
    parts.push(`loaded: ${names.join(", ") || "none"}`);
  }
  return parts.join("; ") || "a live view in a shape this page does not know";
}

function refreshSeconds(view) {
  const asked = Number(new URLSearchParams(location.search).get("refresh"));
  if (asked >= 1) return asked;
  return (view && view.refresh_s) || 5;
}

let last = null;

async function refresh() {
  const err = document.getElementById("fetch-error");
  try {
    const resp = await fetch(CLUSTER_URL, { cache: "no-store" });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
    const started = performance.now();
    draw(body);
    document.body.dataset.renderMs = (performance.now() - started).toFixed(2);
    last = body;
    err.hidden = true;
  } catch (e) {
    err.hidden = false;
    err.textContent = `Could not refresh the cluster view: ${e.message}. Showing the last one; retrying.`;
  }
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  setTimeout(refresh, refreshSeconds(last) * 1000);
}

refresh();
