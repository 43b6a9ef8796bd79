// larder's dashboard (docs/design/dashboard.md). Everything shown comes from the
// management API, called with the signed-in token; the token lives in this tab's
// sessionStorage and travels only in the Authorization header.
"use strict";

(function () {
  const KEY = "larder.token";
  const PERMISSIONS = ["pull", "push", "delete", "create-cache", "configure-cache",
    "configure-cache-retention", "destroy-cache", "metrics"];
  const $ = (id) => document.getElementById(id);

  // Tokens minted from this page in this session, so a token that may not list
  // every token can still revoke the ones it delegated.
  let mintedHere = [];
  // Whether the token list came from the server (admin) or from mintedHere.
  let listedByServer = false;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(KEY);
  }

  async function api(method, path, body) {
    const headers = { "Authorization": "Bearer " + token() };
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = (data && data.message) || text.trim() || resp.statusText;
      throw new ApiError(resp.status, msg);
    }
    return data;
  }

  function el(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === "text") e.textContent = v;
        else if (k === "class") e.className = v;
        else e.setAttribute(k, v);
      }
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function when(secs) {
    if (!secs) return "—";
    return new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  function showError(id, err) {
    const p = $(id);
    if (!err) { p.hidden = true; p.textContent = ""; return; }
    p.textContent = err.status ? err.message + " (HTTP " + err.status + ")" : String(err.message || err);
    p.hidden = false;
  }

  function setField(card, field, text, value) {
    const dd = card.querySelector('[data-field="' + field + '"]');
    dd.textContent = text;
    if (value !== undefined) dd.dataset.value = String(value);
  }

  function nixConf(s) {
    const lines = [
      "extra-substituters = " + s.config.substituter_endpoint,
      "extra-trusted-public-keys = " + s.config.public_key,
    ];
    if (!s.config.is_public) {
      const host = new URL(s.config.substituter_endpoint).hostname;
      lines.push("netrc-file = /etc/nix/netrc");
      lines.push("");
      lines.push("# /etc/nix/netrc (mode 0600), with a token that may pull:");
      lines.push("machine " + host + " password <TOKEN>");
    }
    return lines.join("\n");
  }

  // Copy to the clipboard where the browser allows it (HTTPS or localhost);
  // elsewhere select the text so the user can copy it by hand.
  function copy(text, button, source) {
    const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
    const select = () => {
      if (source.select) { source.select(); return; }
      const range = document.createRange();
      range.selectNodeContents(source);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, select);
    } else {
      select();
    }
  }

  function renderCache(s) {
    const card = $("cache-card").content.firstElementChild.cloneNode(true);
    card.dataset.cache = s.name;
    card.querySelector(".name").textContent = s.name;
    card.querySelector(".badge").textContent = s.config.is_public ? "public" : "private";
    const u = s.usage, c = s.counts;
    setField(card, "paths", String(u.paths), u.paths);
    setField(card, "stored", bytes(u.stored_bytes), u.stored_bytes);
    setField(card, "logical", bytes(u.logical_bytes), u.logical_bytes);
    const lookups = c.narinfo_hits + c.narinfo_misses;
    setField(card, "hit-rate",
      lookups ? Math.round(100 * c.narinfo_hits / lookups) + "% (" + c.narinfo_hits + " of " + lookups + ")" : "no lookups yet",
      lookups ? c.narinfo_hits / lookups : "");
    const dd = card.querySelector('[data-field="hit-rate"]');
    dd.dataset.hits = String(c.narinfo_hits);
    dd.dataset.misses = String(c.narinfo_misses);
    setField(card, "pushes", String(c.pushes), c.pushes);
    setField(card, "quota", u.quota_bytes ? bytes(u.quota_bytes) : "none", u.quota_bytes || "");
    setField(card, "pins", String(u.pins), u.pins);
    const rows = card.querySelector("table.recent tbody");
    for (const p of s.recent) {
      rows.append(el("tr", null, [
        el("td", { class: "path", text: p.store_path }),
        el("td", { text: bytes(p.nar_size) }),
        el("td", { text: when(p.stored_at) }),
      ]));
    }
    card.querySelector(".empty-recent").hidden = s.recent.length > 0;
    card.querySelector("table.recent").hidden = s.recent.length === 0;
    const conf = nixConf(s);
    card.querySelector("pre.conf").textContent = conf;
    const b = card.querySelector(".copy-conf");
    b.addEventListener("click", () => copy(conf, b, card.querySelector("pre.conf")));
    return card;
  }

  async function loadCaches() {
    const list = $("cache-list");
    const caches = await api("GET", "/_api/v1/caches");
    const cards = [];
    for (const c of caches) {
      try {
        cards.push(renderCache(await api("GET", "/_api/v1/cache/" + encodeURIComponent(c.name) + "/summary")));
      } catch (e) {
        // A public cache the token holds nothing on is listed but may be
        // refused a summary only if it vanished meanwhile: leave it out.
        if (!(e instanceof ApiError) || e.status >= 500) throw e;
      }
    }
    list.replaceChildren(...cards);
    $("no-caches").hidden = cards.length > 0;
  }

  async function loadStore() {
    const box = $("store-figures");
    let s;
    try {
      s = await api("GET", "/_api/v1/stats");
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        box.replaceChildren();
        $("store").hidden = true;
        return;
      }
      throw e;
    }
    const l = s.lifecycle || {};
    const indexed = l.indexed_bytes || 0;
    const figures = [
      ["chunks", "Chunks", String(s.chunks)],
      ["store-paths", "Store paths", String(s.store_paths)],
      ["nars", "NARs", String(s.nars)],
      ["stored", "Stored on disk", bytes(l.stored_bytes)],
      ["indexed", "Live (indexed)", bytes(indexed)],
      ["logical", "Logical NAR bytes", bytes(l.logical_nar_bytes)],
      ["dedup", "Dedup ratio", indexed ? (l.logical_nar_bytes / indexed).toFixed(2) + "×" : "—"],
      ["reclaimable", "Reclaimable", bytes(l.reclaimable_bytes)],
      ["budget", "Size budget", l.max_bytes ? bytes(l.max_bytes) : "none"],
      ["last-gc", "Last GC pass", l.last_gc ? when(l.last_gc.started_at) : "never"],
    ];
    box.replaceChildren(...figures.map(([k, label, v]) =>
      el("div", null, [el("dt", { text: label }), el("dd", { "data-field": k, text: v })])));
    $("store").hidden = false;
  }

  function grantsText(caches) {
    return Object.entries(caches || {}).map(([p, perms]) => p + ": " + [].concat(perms).join(", ")).join("; ");
  }

  function tokenRow(t) {
    const revoked = Boolean(t.revoked_at);
    const row = el("tr", { "data-jti": t.jti, class: revoked ? "revoked-row" : "" }, [
      el("td", { text: t.sub }),
      el("td", { class: "mono", text: t.jti }),
      el("td", { text: grantsText(t.caches) }),
      el("td", { text: when(t.expires_at) }),
      el("td", { class: "state", text: revoked ? "revoked" : "live" }),
    ]);
    const action = el("td");
    if (!revoked) {
      const b = el("button", { type: "button", class: "danger revoke", text: "Revoke" });
      b.addEventListener("click", () => revoke(t.jti));
      action.append(b);
    }
    row.append(action);
    return row;
  }

  async function loadTokens() {
    let rows;
    try {
      rows = await api("GET", "/_api/v1/tokens");
      listedByServer = true;
    } catch (e) {
      if (!(e instanceof ApiError) || (e.status !== 401 && e.status !== 403)) throw e;
      listedByServer = false;
      rows = mintedHere;
    }
    rows = rows.slice().sort((a, b) => (b.issued_at || 0) - (a.issued_at || 0));
    $("token-rows").replaceChildren(...rows.map(tokenRow));
    $("tokens-note").hidden = listedByServer;
    $("token-table").hidden = rows.length === 0;
  }

  async function revoke(jti) {
    showError("revoke-error", null);
    try {
      await api("POST", "/_api/v1/tokens/revoke", { jti });
      const mine = mintedHere.find((t) => t.jti === jti);
      if (mine) mine.revoked_at = Math.floor(Date.now() / 1000);
      await loadTokens();
    } catch (e) {
      showError("revoke-error", e);
    }
  }

  async function mint(ev) {
    ev.preventDefault();
    showError("mint-error", null);
    const perms = PERMISSIONS.filter((p) => $("perm-" + p).checked);
    if (perms.length === 0) {
      showError("mint-error", new Error("choose at least one permission"));
      return;
    }
    const sub = $("mint-sub").value.trim();
    const body = {
      sub,
      validity_secs: Number($("mint-validity").value),
      caches: { [$("mint-pattern").value.trim()]: perms },
    };
    try {
      const m = await api("POST", "/_api/v1/tokens", body);
      $("minted-sub").textContent = m.claims.sub;
      $("minted-jti").textContent = m.claims.jti;
      $("minted-token").value = m.token;
      $("minted").hidden = false;
      mintedHere.push({
        jti: m.claims.jti, sub: m.claims.sub, caches: m.claims.caches,
        issued_at: m.claims.iat, expires_at: m.claims.exp, revoked_at: null,
      });
      await loadTokens();
    } catch (e) {
      showError("mint-error", e);
    }
  }

  function clearAll() {
    mintedHere = [];
    for (const id of ["cache-list", "store-figures", "token-rows"]) $(id).replaceChildren();
    for (const id of ["app-error", "mint-error", "revoke-error", "signin-error"]) showError(id, null);
    $("minted").hidden = true;
    $("minted-token").value = "";
    $("minted-sub").textContent = "";
    $("minted-jti").textContent = "";
    $("store").hidden = true;
    $("who").textContent = "";
  }

  async function load() {
    showError("app-error", null);
    try {
      await loadCaches();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut();
        showError("signin-error", e);
        return;
      }
      showError("app-error", e);
      return;
    }
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("refresh").hidden = false;
    $("who").textContent = "signed in";
    try {
      await Promise.all([loadStore(), loadTokens()]);
    } catch (e) {
      showError("app-error", e);
    }
    document.body.dataset.state = "ready";
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    clearAll();
    $("app").hidden = true;
    $("signout").hidden = true;
    $("refresh").hidden = true;
    $("signin").hidden = false;
    document.body.dataset.state = "signed-out";
  }

  function init() {
    const perms = $("mint-perms");
    for (const p of PERMISSIONS) {
      const box = el("input", { type: "checkbox", id: "perm-" + p, value: p });
      if (p === "pull") box.checked = true;
      perms.append(el("label", { for: "perm-" + p }, [box, p]));
    }
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token-input").value.trim();
      $("token-input").value = "";
      if (!t) return;
      clearAll();
      sessionStorage.setItem(KEY, t);
      document.body.dataset.state = "loading";
      load();
    });
    $("signout").addEventListener("click", signOut);
    $("refresh").addEventListener("click", () => { document.body.dataset.state = "loading"; load(); });
    $("mint-form").addEventListener("submit", mint);
    $("minted-copy").addEventListener("click", () => copy($("minted-token").value, $("minted-copy"), $("minted-token")));
    if (token()) {
      document.body.dataset.state = "loading";
      load();
    } else {
      signOut();
    }
  }

  init();
})();
