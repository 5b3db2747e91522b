// mqserve's live dashboard: polls the gateway's /-/api/status every second and redraws.
// Everything from the JSON goes into the page as text (textContent), never as HTML.
(() => {
  "use strict";
  const REFRESH_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  let updates = 0;

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const statusClass = (s) => ({RUNNING: "s-ok", HEALTHY: "s-ok", UPSCALING: "s-warn", DOWNSCALING: "s-warn",
    DEPLOYING: "s-warn", UPDATING: "s-warn", STARTING: "s-warn", STOPPING: "s-dim", DELETING: "s-dim"}[s] || "s-bad");
  const pill = (s) => h("span", {class: "pill " + statusClass(s)}, s);

  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return v.toFixed(2) + " ms";
    if (v < 100) return v.toFixed(1) + " ms";
    if (v < 10000) return Math.round(v) + " ms";
    return (v / 1000).toFixed(1) + " s";
  }
  const rate = (v) => (v >= 100 ? Math.round(v) : v.toFixed(v >= 10 ? 1 : 2));
  const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.01 ? 2 : 1) + "%");
  const age = (v) => (v === null || v === undefined ? "gone" : v.toFixed(1) + " s");

  function spark(values, label, color, fmt) {
    const w = 300, ht = 40;
    const nums = values.map((v) => (v === null ? 0 : v));
    const max = Math.max(1e-9, ...nums);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "line");
    const pts = nums.map((v, i) => `${(i * w / Math.max(1, nums.length - 1)).toFixed(1)},${(ht - 2 - v / max * (ht - 4)).toFixed(1)}`);
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("points", `0,${ht} ${pts.join(" ")} ${w},${ht}`);
    area.setAttribute("fill", color);
    area.setAttribute("fill-opacity", "0.15");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(area, line);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${label}, last 5 min (max ${fmt(max)})`;
    svg.append(title);
    return h("div", {class: "spark"}, svg, h("span", {}, `${label} · max ${fmt(max)}`));
  }

  function replicasCell(dep) {
    const running = dep.replica_states.RUNNING || 0;
    const others = Object.entries(dep.replica_states).filter(([s]) => s !== "RUNNING").map(([s, n]) => `${n} ${s}`);
    return h("td", {class: "num", "data-field": "replicas"},
      h("b", {"data-field": "running"}, running), " / ", h("span", {"data-field": "target"}, dep.target_replicas),
      others.length ? h("div", {class: "dim"}, others.join(", ")) : null);
  }

  function deploymentRows(name, dep) {
    const s = dep.series;
    const row = h("tr", {"data-deployment": name},
      h("td", {}, h("b", {}, name)),
      h("td", {}, pill(dep.status), dep.message ? h("div", {class: "dim"}, dep.message.split("\n")[0]) : null),
      replicasCell(dep),
      h("td", {class: "num", "data-field": "queued"}, dep.queued_requests),
      h("td", {class: "num", "data-field": "ongoing"}, dep.ongoing_requests),
      h("td", {class: "num", "data-field": "requests_per_s"}, rate(dep.requests_per_s)),
      h("td", {class: "num", "data-field": "requests_total"}, dep.requests_total),
      h("td", {class: "num " + (dep.error_rate ? "s-bad" : ""), "data-field": "error_rate"}, pct(dep.error_rate)),
      h("td", {class: "num", "data-field": "p50_ms"}, ms(dep.p50_ms)),
      h("td", {class: "num", "data-field": "p99_ms"}, ms(dep.p99_ms)),
      h("td", {}, h("div", {class: "sparks"},
        spark(s.requests_per_s, "req/s", "#58a6ff", (v) => rate(v)),
        spark(s.queue_depth, "queue", "#d29922", (v) => Math.round(v)),
        spark(s.p99_ms, "p99", "#bc8cff", ms))));
    const chips = dep.replicas.map((r) => {
      const models = (dep.multiplexed_model_ids || {})[r.id];
      return h("span", {class: "chip", "data-replica": r.id, "data-state": r.state},
        h("span", {class: statusClass(r.state)}, "● "), r.id.split("#").pop(), " on ", h("b", {}, r.worker),
        r.state !== "RUNNING" ? ` (${r.state})` : "", models && models.length ? ` · models: ${models.join(", ")}` : "");
    });
    const detail = h("tr", {class: "replicas", "data-replicas-of": name},
      h("td", {colSpan: 11}, ...(chips.length ? chips : [h("span", {class: "dim"}, "no replicas")])));
    return [row, detail];
  }

  function renderApps(apps) {
    const names = Object.keys(apps);
    if (!names.length) return [h("div", {class: "card empty"}, "No application is running.")];
    return names.map((name) => {
      const app = apps[name];
      const head = h("tr", {}, ...["Deployment", "Status", "Replicas", "Queue", "In flight", "Req/s", "Requests",
        "Errors", "p50", "p99", "Last 5 minutes"].map((t) => h("th", {}, t)));
      const table = h("table", {}, head);
      for (const [dname, dep] of Object.entries(app.deployments)) table.append(...deploymentRows(dname, dep));
      return h("div", {class: "card", "data-app": name},
        h("h2", {}, name, pill(app.status),
          h("span", {class: "meta"}, `route ${app.route_prefix === null ? "none" : app.route_prefix} · ingress ${app.ingress}`),
          app.message ? h("span", {class: "meta s-bad"}, app.message.split("\n")[0]) : null),
        table);
    });
  }

  function renderMembers(members, columns) {
    const ids = Object.keys(members);
    const head = h("tr", {}, h("th", {}, "Id"), ...columns.map(([t]) => h("th", {}, t)), h("th", {}, "Heartbeat"));
    const rows = ids.map((id) => {
      const m = members[id];
      return h("tr", {"data-member": id}, h("td", {class: "mono"}, id),
        ...columns.map(([, f]) => h("td", {}, f(m))),
        h("td", {class: "num " + (m.heartbeat_age_s === null ? "s-bad" : m.heartbeat_age_s > 2 ? "s-warn" : "s-ok")},
          age(m.heartbeat_age_s)));
    });
    return rows.length ? [head, ...rows] : [h("tr", {}, h("td", {class: "empty"}, "none"))];
  }

  function renderErrors(errors) {
    if (!errors.length) return [h("tr", {}, h("td", {class: "empty"}, "No failed request recently."))];
    const head = h("tr", {}, ...["Time", "Deployment", "Exception", "Message", "Request id"].map((t) => h("th", {}, t)));
    return [head, ...errors.map((e) => h("tr", {"data-error": e.type},
      h("td", {class: "num"}, new Date(e.time_s * 1000).toLocaleTimeString()),
      h("td", {}, `${e.app} / ${e.deployment}`),
      h("td", {class: "err-type"}, e.type),
      h("td", {}, e.message),
      h("td", {class: "mono dim"}, e.request_id)))];
  }

  function render(d) {
    document.getElementById("apps").replaceChildren(...renderApps(d.applications));
    document.getElementById("workers").replaceChildren(...renderMembers(d.workers, [
      ["Host", (m) => m.host || ""], ["Pid", (m) => m.pid || ""],
      ["Replicas", (m) => (m.replicas === undefined ? "" : (Array.isArray(m.replicas) ? m.replicas.length : m.replicas))
        + (m.max_replicas ? ` / ${m.max_replicas}` : "")]]));
    document.getElementById("gateways").replaceChildren(...renderMembers(d.gateways, [
      ["Address", (m) => `${m.host || m.hostname || ""}:${m.port || ""}`], ["Pid", (m) => m.pid || ""]]));
    document.getElementById("recent-errors").replaceChildren(...renderErrors(d.recent_errors));
    document.getElementById("controller").textContent = d.controller || "none";
    document.getElementById("updated").textContent = "updated " + new Date(d.time_s * 1000).toLocaleTimeString();
    updates += 1;
    document.body.dataset.updates = String(updates);
    if (updates === 1) performance.mark("mqserve-first-render");
  }

  function connected(ok) {
    const c = document.getElementById("conn");
    c.textContent = ok ? "live" : "disconnected";
    c.className = "pill " + (ok ? "s-ok" : "s-bad");
  }

  async function tick() {
    try {
      const r = await fetch("api/status", {cache: "no-store"});
      if (!r.ok) throw new Error(r.status);
      render(await r.json());
      connected(true);
    } catch (e) {
      connected(false);
    } finally {
      setTimeout(tick, REFRESH_MS);
    }
  }
  tick();
})();
