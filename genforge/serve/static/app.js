// genforge's page: every action is a call of the public API (/v1/...) with the user's key.
// No framework and no build step: the service ships this file as it is. Every string shown comes from
// i18n/<lang>.json through t(); tests/test_page.py checks that every key used here exists in each language.

const $ = (id) => document.getElementById(id);
const KEY = "genforge.key";    // sessionStorage: the key lives as long as the tab
const LANG = "genforge.lang";  // localStorage: the language choice is remembered
const state = { lang: "en", dict: {}, models: [], details: null, review: null };
// Keys chosen at run time are spelled out here, so the translation test sees every one.
const KIND = { text: "kind.text", image: "kind.image", table: "kind.table" };
const MODE = { pairs: "rev.mode_pairs", rubric: "rev.mode_rubric" };
const RUBRIC = ["rev.rubric_1", "rev.rubric_3", "rev.rubric_5"];
const SCORE = ["rev.score_1", "rev.score_2", "rev.score_3", "rev.score_4", "rev.score_5"];

// ---------------------------------------------------------------- translation

// A var may itself be a translation ({key: "kind.text"}), so a language switch re-translates it too.
function t(key, vars = {}) {
  const s = state.dict[key];
  if (s === undefined) { console.error("missing translation: " + key); return key; }
  return s.replace(/\{(\w+)\}/g, (_, name) => {
    const v = vars[name];
    return v !== null && typeof v === "object" ? t(v.key) : String(v ?? "");
  });
}

// An element whose text is a translation, kept so a language switch re-translates it in place.
function tr(el, key, vars = {}) {
  el.dataset.i18n = key;
  el.dataset.i18nVars = JSON.stringify(vars);
  el.textContent = t(key, vars);
  return el;
}

function translateAll() {
  for (const el of document.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n, JSON.parse(el.dataset.i18nVars || "{}"));
  }
  for (const el of document.querySelectorAll("[data-i18n-alt]")) el.alt = t(el.dataset.i18nAlt);
  for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  document.title = t("title");
}

async function setLanguage(lang) {
  const r = await fetch(`/page/i18n/${lang}.json`);
  state.dict = await r.json();
  state.lang = lang;
  localStorage.setItem(LANG, lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  $("lang").value = lang;
  translateAll();
}

// ---------------------------------------------------------------- DOM and API helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "i18n") tr(el, v[0], v[1] || {});
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    Object.assign(this, { status, code, retryAfter });
  }
}

async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new ApiError(401, "missing_api_key", "");
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", String(e));
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new ApiError(r.status, e.code || "", e.message || "", r.headers.get("Retry-After"));
  }
  return data;
}

// Plain words for what the service refused, by its error code; the service's own message follows.
const ERRORS = {
  missing_api_key: "err.missing_key",
  invalid_api_key: "err.invalid_key",
  content_policy_violation: "err.moderation",
  network: "err.network",
  model_not_found: "err.model_not_found",
  model_not_ready: "err.busy",
  overloaded: "err.busy",
  reloading: "err.busy",
  timeout: "err.busy",
  condition_unmet: "err.condition_unmet",
  generation_not_found: "err.generation_not_found",
  review_not_found: "err.review_not_found",
};

function explain(e) {
  if (!(e instanceof ApiError)) return { key: "err.other", vars: { status: "-" }, detail: String(e) };
  let key = ERRORS[e.code];
  if (e.status === 429) key = "err.rate_limit";
  else if (!key && (e.code.startsWith("max_") || e.code === "context_length_exceeded" || e.code === "units_per_minute" ||
                    e.code === "too_long")) key = "err.limit";
  else if (!key && e.status === 400) key = "err.invalid";
  return { key: key || "err.other", vars: { status: e.status, seconds: e.retryAfter || "60" },
           detail: e.code === "missing_api_key" && !e.message ? "" : e.message };
}

function report(target, e) {
  const { key, vars, detail } = explain(e);
  target.replaceChildren(h("span", { class: "error", role: "alert", i18n: [key, vars] }),
                         detail ? h("span", { class: "detail" }, " " + detail) : "");
}

function say(target, key, vars = {}) {
  target.replaceChildren(h("span", { i18n: [key, vars] }));
}

function label(provenance, generationId) {
  return h("p", { class: "ai-label" },
           h("strong", { i18n: ["label.ai"] }), " ",
           h("span", { i18n: ["label.by", { model: provenance.model, version: provenance.version }] }),
           generationId ? h("span", { class: "gid" }, ` · ${generationId}`) : null);
}

// ---------------------------------------------------------------- key

function showKeyState() {
  say($("key-status"), sessionStorage.getItem(KEY) ? "key.set" : "key.unset");
}

// ---------------------------------------------------------------- models and the form

async function loadModels() {
  const status = $("gen-status");
  try {
    const body = await api("GET", "/v1/models");
    state.models = body.data;
    const select = $("model");
    select.replaceChildren(...state.models.map((m) => h("option", { value: m.id }, `${m.id} (${m.version})`)));
    status.replaceChildren();
    if (state.models.length) await chooseModel(select.value);
    else say(status, "gen.no_models");
  } catch (e) {
    report(status, e);
  }
}

async function chooseModel(id) {
  const d = await api("GET", `/v1/models/${encodeURIComponent(id)}`);
  state.details = d;
  $("model-info").hidden = false;
  tr($("model-summary"), "gen.summary", { kind: { key: KIND[d.kind] }, family: d.family, version: d.version, source: d.source });
  $("model-card").textContent = d.model_card || t("gen.no_card");
  for (const el of document.querySelectorAll("#gen-form [data-kind]")) el.hidden = el.dataset.kind !== d.kind;
  for (const el of document.querySelectorAll("#gen-form [data-option]")) el.hidden = !(el.dataset.option in d.options);
  const opts = d.options || {};
  $("temperature").value = opts.temperature ?? "";
  $("max_tokens").value = opts.max_tokens ?? "";
  $("steps").value = opts.steps ?? "";
  tr($("n-label"), d.kind === "table" ? "gen.rows" : "gen.count");
  $("n").value = d.kind === "table" ? 20 : 2;
  if (d.kind === "image") {
    $("class").replaceChildren(h("option", { value: "", i18n: ["gen.class_any"] }),
                               ...d.classes.map((c) => h("option", { value: c }, c)));
  }
  $("conditions").replaceChildren();
  $("gen-form").dataset.model = d.id;  // the form is this model's now (scripts wait for it)
  $("gen-form").hidden = false;
}

function conditionRow() {
  const columns = state.details.columns.filter((c) => c.categories || c.type === "numeric");
  const value = h("span", { class: "cond-value" });
  const column = h("select", { "data-i18n-label": "gen.condition_column", "aria-label": t("gen.condition_column") },
                   ...columns.map((c) => h("option", { value: c.name }, c.name)));
  const fill = () => {
    const c = columns.find((x) => x.name === column.value);
    if (c.categories) {
      value.replaceChildren(h("select", { "data-i18n-label": "gen.condition_value", "aria-label": t("gen.condition_value") },
                              ...c.categories.map((v) => h("option", { value: JSON.stringify(v) }, String(v)))));
    } else {
      value.replaceChildren(
        h("input", { type: "number", step: "any", class: "min", "data-i18n-label": "gen.condition_min",
                     "aria-label": t("gen.condition_min"), placeholder: String(c.min) }),
        h("input", { type: "number", step: "any", class: "max", "data-i18n-label": "gen.condition_max",
                     "aria-label": t("gen.condition_max"), placeholder: String(c.max) }));
    }
  };
  column.addEventListener("change", fill);
  fill();
  const row = h("div", { class: "condition row" }, column, value,
                h("button", { type: "button", class: "secondary", i18n: ["gen.condition_remove"],
                              on: { click: () => row.remove() } }));
  return row;
}

function conditions() {
  const out = {};
  for (const row of document.querySelectorAll("#conditions .condition")) {
    const column = row.querySelector("select").value;
    const choice = row.querySelector(".cond-value select");
    if (choice) { out[column] = JSON.parse(choice.value); continue; }
    const range = {};
    const min = row.querySelector(".min").value, max = row.querySelector(".max").value;
    if (min !== "") range.min = Number(min);
    if (max !== "") range.max = Number(max);
    if (Object.keys(range).length) out[column] = range;
  }
  return out;
}

function number(id) {
  const v = $(id).value;
  return v === "" ? undefined : Number(v);
}

// ---------------------------------------------------------------- generate

async function generate(event) {
  event.preventDefault();
  const d = state.details, status = $("gen-status"), button = $("generate");
  const base = { model: d.id, n: number("n"), seed: number("seed") };
  button.disabled = true;
  say(status, "gen.working");
  try {
    let cards;
    if (d.kind === "text") {
      const body = await api("POST", "/v1/completions", { ...base, prompt: $("prompt").value,
                                                            temperature: number("temperature"), max_tokens: number("max_tokens") });
      const ids = body.choices.length === 1 ? [body.id] : body.choices.map((_, i) => `${body.id}-${i}`);
      cards = body.choices.map((c, i) => result(h("p", { class: "text-out" }, c.text), body.provenance, ids[i], true));
    } else if (d.kind === "image") {
      const body = await api("POST", "/v1/images/generations", { ...base, prompt: $("class").value,
                                                                 ...("steps" in d.options ? { steps: number("steps") } : {}) });
      cards = body.data.map((img) => result(
        h("figure", {}, h("img", { src: `data:image/png;base64,${img.b64_json}`, "data-i18n-alt": "gen.image_alt",
                                   alt: t("gen.image_alt") }),
          h("figcaption", {}, img.revised_prompt)), body.provenance, img.generation_id, false));
    } else {
      const body = await api("POST", "/v1/tables/generations", { ...base, conditions: conditions() });
      cards = [result(tablePreview(body), body.provenance, body.generation_id, false)];
    }
    $("results").replaceChildren(...cards);
    say(status, "gen.done", { count: cards.length });
  } catch (e) {
    report(status, e);
  } finally {
    button.disabled = false;
  }
}

function tablePreview(body) {
  const columns = body.columns.map((c) => c.name);
  const rows = body.data.map((r) => columns.map((c) => r[c]));
  const download = h("button", { type: "button", class: "secondary", i18n: ["gen.csv"], on: { click: () => {
    const link = h("a", { href: URL.createObjectURL(new Blob([csv(columns, rows)], { type: "text/csv" })),
                          download: `${body.model}-${body.generation_id}.csv` });
    link.click();
    URL.revokeObjectURL(link.href);
  } } });
  return h("div", {}, dataTable(columns, rows.slice(0, 50)),
           h("p", { class: "hint", i18n: ["gen.preview", { shown: Math.min(50, rows.length), total: rows.length }] }),
           download);
}

function dataTable(columns, rows) {
  return h("div", { class: "table-wrap", tabindex: "0" },
           h("table", {}, h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col" }, c)))),
             h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((v) => h("td", {}, v === null ? "" : String(v))))))));
}

function csv(columns, rows) {
  const cell = (v) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns, ...rows].map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}

// One result: its content, its AI label, and a rating form posting to /v1/feedback.
let resultCount = 0;
function result(content, provenance, generationId, correctable) {
  const n = ++resultCount;
  const stars = h("fieldset", { class: "stars" }, h("legend", { i18n: ["rate.legend"] }),
                  ...[1, 2, 3, 4, 5].map((v) => h("label", {},
                    h("input", { type: "radio", name: `rating-${n}`, value: String(v), required: true }), ` ${v}`)));
  const comment = h("input", { id: `comment-${n}`, type: "text", maxlength: "2000" });
  const correction = correctable ? h("textarea", { id: `correction-${n}`, rows: "2" }) : null;
  const status = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "rate" }, stars,
                 h("label", { for: `comment-${n}`, i18n: ["rate.comment"] }), comment,
                 correctable ? h("label", { for: `correction-${n}`, i18n: ["rate.correction"] }) : null, correction,
                 h("button", { type: "submit", i18n: ["rate.send"] }), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const rating = Number(form.querySelector("input[type=radio]:checked").value);
    const body = { generation_id: generationId, rating };
    if (comment.value.trim()) body.comment = comment.value.trim();
    if (correction && correction.value.trim()) body.corrected_output = correction.value;
    try {
      await api("POST", "/v1/feedback", body);
      say(status, "rate.saved", { rating });
    } catch (e) {
      report(status, e);
    }
  });
  return h("article", { class: "result" }, content, label(provenance, generationId), form);
}

// ---------------------------------------------------------------- review

async function loadReviews() {
  const status = $("rev-status");
  try {
    const body = await api("GET", "/v1/reviews");
    $("reviews").replaceChildren(...body.data.map((r) => h("li", {},
      h("button", { type: "button", class: "secondary", on: { click: () => openReview(r.id) } }, r.name || r.id), " ",
      h("span", { i18n: ["rev.entry", { kind: { key: KIND[r.kind] }, mode: { key: MODE[r.mode] }, items: r.items,
                                        rated: r.rated_by_you }] }))));
    if (body.data.length) status.replaceChildren();
    else say(status, "rev.none");
  } catch (e) {
    report(status, e);
  }
}

async function openReview(id) {
  try {
    const r = await api("GET", `/v1/reviews/${encodeURIComponent(id)}`);
    state.review = r;
    $("review").hidden = false;
    $("review-title").textContent = r.name || r.id;
    $("review-summary").replaceChildren();
    $("rev-status").replaceChildren();
    showItem();
  } catch (e) {
    report($("rev-status"), e);
  }
}

function showItem() {
  const r = state.review;
  const index = r.items.findIndex((it) => !it.your_rating);
  const done = r.items.length - r.items.filter((it) => !it.your_rating).length;
  tr($("review-progress"), "rev.progress", { done, total: r.items.length });
  if (index < 0) {
    $("review-item").replaceChildren(h("p", { i18n: ["rev.finished"] }));
    $("review-actions").replaceChildren();
    showSummary();
    return;
  }
  const item = r.items[index];
  const rate = (body) => async () => {
    try {
      await api("POST", `/v1/reviews/${encodeURIComponent(r.id)}/ratings`, { item_id: item.id, ...body });
      item.your_rating = body;
      showItem();
    } catch (e) {
      report($("rev-status"), e);
    }
  };
  if (r.mode === "pairs") {
    $("review-item").replaceChildren(h("p", { class: "question", i18n: ["rev.question_pairs"] }),
      h("div", { class: "pair" },
        h("section", { "aria-labelledby": `side-a-${index}` }, h("h3", { id: `side-a-${index}`, i18n: ["rev.side_a"] }), content(item.a)),
        h("section", { "aria-labelledby": `side-b-${index}` }, h("h3", { id: `side-b-${index}`, i18n: ["rev.side_b"] }), content(item.b))));
    $("review-actions").replaceChildren(
      h("button", { type: "button", i18n: ["rev.choose_a"], on: { click: rate({ choice: "a" }) } }),
      h("button", { type: "button", class: "secondary", i18n: ["rev.tie"], on: { click: rate({ choice: "tie" }) } }),
      h("button", { type: "button", i18n: ["rev.choose_b"], on: { click: rate({ choice: "b" }) } }));
  } else {
    $("review-item").replaceChildren(h("p", { class: "question", i18n: ["rev.question_rubric"] }),
      h("ul", { class: "rubric" }, ...RUBRIC.map((key) => h("li", { i18n: [key] }))), content(item.a));
    $("review-actions").replaceChildren(...SCORE.map((key, i) =>
      h("button", { type: "button", "data-i18n-label": key, "aria-label": t(key), on: { click: rate({ score: i + 1 }) } },
        String(i + 1))));
  }
  $("review-actions").querySelector("button").focus();
}

function content(c) {
  if (c.type === "image") {
    return h("img", { src: `data:image/png;base64,${c.b64_png}`, "data-i18n-alt": "rev.sample_alt", alt: t("rev.sample_alt") });
  }
  if (c.type === "text") {
    return h("div", {}, c.prompt ? h("p", { class: "hint" }, c.prompt) : null, h("p", { class: "text-out" }, c.text));
  }
  return dataTable(c.columns, c.rows);
}

async function showSummary() {
  const r = state.review;
  try {
    const s = await api("GET", `/v1/reviews/${encodeURIComponent(r.id)}/summary`);
    const fmt = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(2));
    const head = h("p", { i18n: ["rev.summary_head", { ratings: s.ratings, reviewers: s.reviewers, rated: s.items_rated,
                                                        items: s.items }] });
    let body;
    if (s.mode === "pairs") {
      body = h("table", {}, h("thead", {}, h("tr", {},
          h("th", { scope: "col", i18n: ["rev.col_source"] }), h("th", { scope: "col", i18n: ["rev.col_preference"] }),
          h("th", { scope: "col", i18n: ["rev.col_interval"] }), h("th", { scope: "col", i18n: ["rev.col_record"] }))),
        h("tbody", {}, ...(s.sources || []).map((x) => h("tr", {}, h("td", {}, x.source), h("td", {}, fmt(x.preference)),
          h("td", {}, `${fmt(x.low)} – ${fmt(x.high)}`), h("td", {}, `${x.wins} / ${x.ties} / ${x.losses}`)))));
    } else {
      body = h("p", { i18n: ["rev.summary_score", { score: fmt(s.score), low: fmt(s.low), high: fmt(s.high) }] });
    }
    $("review-summary").replaceChildren(h("h3", { i18n: ["rev.summary"] }), head, body);
  } catch (e) {
    report($("rev-status"), e);
  }
}

// ---------------------------------------------------------------- tabs and start

function selectTab(name) {
  for (const tab of ["generate", "review"]) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(`panel-${tab}`).hidden = !on;
  }
  if (name === "review" && sessionStorage.getItem(KEY)) loadReviews();
}

function wire() {
  $("lang").addEventListener("change", (e) => setLanguage(e.target.value));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    showKeyState();
    loadModels();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showKeyState();
  });
  $("models-reload").addEventListener("click", loadModels);
  $("model").addEventListener("change", (e) => chooseModel(e.target.value).catch((err) => report($("gen-status"), err)));
  $("gen-form").addEventListener("submit", generate);
  $("condition-add").addEventListener("click", () => $("conditions").append(conditionRow()));
  $("reviews-reload").addEventListener("click", loadReviews);
  $("review-summary-show").addEventListener("click", showSummary);
  for (const tab of ["generate", "review"]) {
    $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
    $(`tab-${tab}`).addEventListener("keydown", (e) => {  // the ARIA tabs pattern: arrows move between tabs
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      const other = tab === "generate" ? "review" : "generate";
      selectTab(other);
      $(`tab-${other}`).focus();
    });
  }
}

async function start() {
  wire();
  const saved = localStorage.getItem(LANG);
  await setLanguage(saved || (navigator.language.toLowerCase().startsWith("zh") ? "zh" : "en"));
  showKeyState();
  if (sessionStorage.getItem(KEY)) await loadModels();
  document.body.dataset.ready = "true";  // for tests and for anyone scripting the page
}

start();
