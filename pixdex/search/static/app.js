// pixdex web UI: search box, image search (file picker or drag and drop), filters (dates, path glob, min
// score, tags), thumbnail grid, viewer with "more like this". The filters are the API's parameters, which
// are `pixdex search`'s (checked by the server; its one-line errors are shown in the status line).
// An uploaded image stays in this page's memory (to re-run it when a filter changes); the server decodes
// and encodes it in memory and keeps nothing.
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
  let upload = null;       // the File of the last image search
  const tagNav = $("tags");
  const FILTERS = { after: $("f-after"), before: $("f-before"), path: $("f-path"), min_score: $("f-min") };
  const FILTER_WORDS = { after: "from", before: "before", path: "path", min_score: "score \u2265" };

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  async function getJSON(url, init) {
    const opts = Object.assign({}, init || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    const resp = await fetch(url, opts);
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

  // The filters now set, as [name, value] pairs (empty ones left out).
  function filterPairs() {
    return Object.entries(FILTERS).map(([k, el]) => [k, el.value.trim()]).filter(([, v]) => v);
  }

  function withFilters(url) {
    const p = new URLSearchParams(filterPairs());
    const extra = p.toString();
    return extra ? url + "&" + extra : url;
  }

  function describe(what) {
    const bits = filterPairs().map(([k, v]) => FILTER_WORDS[k] + " " + v);
    return bits.length ? what + " (" + bits.join(", ") + ")" : what;
  }

  async function show(request, what) {
    const seq = ++requestSeq;
    setStatus("Searching\u2026");
    try {
      const body = await request();
      if (seq === requestSeq) render(body.results, describe(what(body)));
    } catch (e) {
      if (seq === requestSeq) { grid.replaceChildren(); setStatus(e.message, true); }
    }
  }

  function runSearch(q, tag) {
    let url = "/api/search?k=" + PAGE;
    if (q) url += "&q=" + encodeURIComponent(q);
    if (tag) url += "&tag=" + encodeURIComponent(tag);
    const what = [q ? "\u201c" + q + "\u201d" : "", tag ? "tag " + tag : ""].filter(Boolean).join(" \u00b7 ");
    return show(() => getJSON(withFilters(url)), () => what);
  }

  function runSimilar(id) {
    const url = withFilters("/api/similar/" + encodeURIComponent(id) + "?k=" + PAGE);
    return show(() => getJSON(url), (body) => "images like " + (body.source ? body.source.name : "#" + id));
  }

  function runImage(file) {
    let url = "/api/search/image?k=" + PAGE;
    if (activeTag) url += "&tag=" + encodeURIComponent(activeTag);
    const type = file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream";
    return show(
      () => getJSON(withFilters(url), { method: "POST", body: file, headers: { "Content-Type": type } }),
      () => "images like your " + file.name,
    );
  }

  function searchImage(file) {
    if (!file) return;
    upload = file;
    input.value = "";
    go(searchHash({ image: file.name, tag: activeTag }));
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
    if (hit.date) meta.push(hit.date.replace("T", " ") + (hit.date_source === "mtime" ? " (file date)" : ""));
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

  // The page's state in its URL: q, tag, like (an image id) or image (an upload's name), and the filters.
  function searchHash(state) {
    const p = new URLSearchParams();
    for (const k of ["q", "tag", "like", "image"]) if (state[k]) p.set(k, state[k]);
    for (const [k, v] of filterPairs()) p.set(k, v);
    return "#" + p.toString().replace(/\+/g, "%20");
  }

  function currentHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const state = {};
    for (const k of ["q", "tag", "like", "image"]) state[k] = params.get(k) || "";
    return searchHash(state);
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
          const tag = activeTag === t.label ? "" : t.label;
          const params = new URLSearchParams(location.hash.slice(1));
          go(searchHash(params.has("image") ? { image: params.get("image"), tag } : { q: input.value.trim(), tag }));
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
    for (const [k, el] of Object.entries(FILTERS)) el.value = params.get(k) || "";
    activeTag = params.has("like") ? "" : (params.get("tag") || "");
    markTags();
    if (params.has("like")) {
      input.value = "";
      runSimilar(params.get("like"));
    } else if (params.has("image")) {
      input.value = "";
      if (upload && upload.name === params.get("image")) {
        runImage(upload);
      } else {
        grid.replaceChildren();
        setStatus("Pick or drop the image again to search with it.");
      }
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
    if (q || activeTag) go(searchHash({ q, tag: activeTag }));
  });
  // A changed filter re-runs the search on screen (the filters are read from the inputs into the hash).
  const refilter = () => go(currentHash());
  for (const el of Object.values(FILTERS)) el.addEventListener("change", refilter);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); refilter(); });
  $("f-clear").addEventListener("click", () => {
    for (const el of Object.values(FILTERS)) el.value = "";
    refilter();
  });
  const picker = $("file");
  picker.addEventListener("change", () => { searchImage(picker.files[0]); picker.value = ""; });
  // Drag and drop anywhere on the page.
  const drop = $("drop");
  let dragDepth = 0;
  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    dragDepth += 1;
    drop.hidden = false;
  });
  document.addEventListener("dragover", (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) drop.hidden = true;
  });
  document.addEventListener("drop", (ev) => {
    if (!ev.dataTransfer) return;
    ev.preventDefault();
    dragDepth = 0;
    drop.hidden = true;
    const file = Array.from(ev.dataTransfer.files || [])[0];
    if (file) searchImage(file); else setStatus("Drop an image file.", true);
  });
  $("viewer-like").addEventListener("click", () => {
    if (!current) return;
    const id = current.id;
    closeViewer();
    go(searchHash({ like: String(id) }));
  });
  $("viewer-close").addEventListener("click", closeViewer);
  viewer.addEventListener("click", (ev) => { if (ev.target === viewer) closeViewer(); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !viewer.hidden) closeViewer(); });
  window.addEventListener("hashchange", route);
  loadTags();
  route();
})();
