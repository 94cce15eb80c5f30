// pixdex web UI: search box, tag list (filters the gallery), thumbnail grid, viewer with "more like this".
// Every piece of text from the server goes into the page through textContent, never innerHTML, and
// file names are shown as the API's display forms (name, display_path): bidi overrides and control
// characters in them arrive as visible \uXXXX text, so a name cannot read as another.
"use strict";

(function () {
  const PAGE = 60;
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), statusEl = $("status"), hint = $("hint"), input = $("q");
  const viewer = $("viewer"), viewerImg = $("viewer-img");
  let current = null;      // the result shown in the viewer
  let lastFocus = null;
  let requestSeq = 0;      // ignore answers to superseded requests
  let activeTag = "";      // the tag filtering the gallery ("" = none)
  const tagNav = $("tags");

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
    return body;
  }

  function card(hit) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "card";
    b.dataset.id = String(hit.id);
    b.title = hit.display_path + "  (" + hit.score.toFixed(3) + ")";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = hit.name;
    img.src = "/api/thumb/" + encodeURIComponent(hit.id);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = hit.name;
    b.append(img, label);
    b.addEventListener("click", () => openViewer(hit, b));
    return b;
  }

  function render(results, what) {
    grid.replaceChildren(...results.map(card));
    hint.hidden = true;
    if (results.length === 0) {
      setStatus("No images match " + what + ".");
    } else {
      setStatus(results.length + " result" + (results.length === 1 ? "" : "s") + " for " + what);
    }
  }

  async function runSearch(q, tag) {
    const seq = ++requestSeq;
    setStatus("Searching\u2026");
    let url = "/api/search?k=" + PAGE;
    if (q) url += "&q=" + encodeURIComponent(q);
    if (tag) url += "&tag=" + encodeURIComponent(tag);
    const what = [q ? "\u201c" + q + "\u201d" : "", tag ? "tag " + tag : ""].filter(Boolean).join(" \u00b7 ");
    try {
      const body = await getJSON(url);
      if (seq === requestSeq) render(body.results, what);
    } catch (e) {
      if (seq === requestSeq) { grid.replaceChildren(); setStatus(e.message, true); }
    }
  }

  async function runSimilar(id) {
    const seq = ++requestSeq;
    setStatus("Searching\u2026");
    try {
      const body = await getJSON("/api/similar/" + encodeURIComponent(id) + "?k=" + PAGE);
      const name = body.source ? body.source.name : "#" + id;
      if (seq === requestSeq) render(body.results, "images like " + name);
    } catch (e) {
      if (seq === requestSeq) { grid.replaceChildren(); setStatus(e.message, true); }
    }
  }

  function openViewer(hit, from) {
    current = hit;
    lastFocus = from || null;
    viewerImg.src = "/api/image/" + encodeURIComponent(hit.id);
    viewerImg.alt = hit.name;
    $("viewer-name").textContent = hit.display_path;
    const meta = [];
    if (typeof hit.score === "number") meta.push("score " + hit.score.toFixed(3));
    if (hit.width && hit.height) meta.push(hit.width + "\u00d7" + hit.height);
    if (hit.taken_at) meta.push(String(hit.taken_at));
    if (hit.tags && hit.tags.length) meta.push(hit.tags.map((t) => t.label).join(", "));
    $("viewer-meta").textContent = meta.join(" \u00b7 ");
    $("viewer-open").href = "/api/image/" + encodeURIComponent(hit.id);
    viewer.hidden = false;
    $("viewer-like").focus();
  }

  function closeViewer() {
    viewer.hidden = true;
    viewerImg.removeAttribute("src");
    if (lastFocus) lastFocus.focus();
  }

  function markTags() {
    for (const b of tagNav.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.tag === activeTag));
    }
  }

  function searchHash(q, tag) {
    const p = new URLSearchParams();
    if (q) p.set("q", q);
    if (tag) p.set("tag", tag);
    return "#" + p.toString().replace(/\+/g, "%20");
  }

  async function loadTags() {
    try {
      const body = await getJSON("/api/tags");
      const buttons = body.tags.map((t) => {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.tag = t.label;
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = String(t.count);
        b.append(document.createTextNode(t.label), count);
        b.addEventListener("click", () => {
          go(searchHash(input.value.trim(), activeTag === t.label ? "" : t.label));
        });
        return b;
      });
      tagNav.replaceChildren(...buttons);
      tagNav.hidden = buttons.length === 0;
      markTags();
    } catch (e) {
      tagNav.hidden = true;
    }
  }

  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    activeTag = params.has("like") ? "" : (params.get("tag") || "");
    markTags();
    if (params.has("like")) {
      input.value = "";
      runSimilar(params.get("like"));
    } else if (params.get("q") || activeTag) {
      input.value = params.get("q") || "";
      runSearch(params.get("q") || "", activeTag);
    } else {
      grid.replaceChildren();
      hint.hidden = false;
      setStatus("");
    }
  }

  function go(hash) {
    if (location.hash === hash) route(); else location.hash = hash;
  }

  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = input.value.trim();
    if (q || activeTag) go(searchHash(q, activeTag));
  });
  $("viewer-like").addEventListener("click", () => {
    if (!current) return;
    const id = current.id;
    closeViewer();
    go("#like=" + encodeURIComponent(id));
  });
  $("viewer-close").addEventListener("click", closeViewer);
  viewer.addEventListener("click", (ev) => { if (ev.target === viewer) closeViewer(); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !viewer.hidden) closeViewer(); });
  window.addEventListener("hashchange", route);
  loadTags();
  route();
})();
