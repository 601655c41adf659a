/*
 * llmserver chat page: answers streamed over a WebSocket (protocol in chat/consumers.py);
 * conversations kept on the server (CHAT_HISTORY=server, chat/history.py) or in this
 * browser's localStorage (CHAT_HISTORY=browser).
 *
 * On the server, the server's copy is the one that counts: a tab saves a conversation
 * with the version it last had and, if another tab or browser saved it since, takes
 * theirs (unless it is answering in it); each save is told to the user's other tabs over
 * the socket ("history" frames), and a tab reads the list again when it gets the focus.
 * Conversations an earlier page kept in this browser move to the server once.
 *
 * In the browser, each conversation is its own localStorage item, written only by a tab
 * that changed it: tabs of the same user, each answering in its own conversation, never
 * overwrite each other's, and each follows the others' through `storage` events.
 *
 * What the user writes is put on the page as text. A model's answer is Markdown: parsed by
 * marked with any raw HTML in it kept as text (a model answering "<script>…" shows that
 * text), then cleaned by DOMPurify before it becomes part of the page, its code blocks
 * highlighted by highlight.js (all three served by this server, chat/static/chat/vendor).
 */
(function () {
  "use strict";

  const MIN_RETRY_MS = 500;
  const MAX_RETRY_MS = 5000;
  const TITLE_LENGTH = 48;
  const MAX_CONVERSATIONS = 200;
  const STATES = ["streaming", "done", "stopped", "error"];

  const config = readConfig();
  const ON_SERVER = config.history === "server";
  const TAB = newId(); // this tab, named in its saves so that it ignores their echo
  const LIST_KEY = "llmserver.chat." + config.user; // all conversations in one item, as pages before kept them
  const CONVERSATION_PREFIX = LIST_KEY + "/"; // + a conversation's id (user names have no "/")
  const SETTINGS_KEY = "llmserver.chat.settings." + config.user;
  // "/login/?next=/": slashes stay readable, anything else in the path is escaped.
  const LOGIN_URL = (config.login_url || "/login/") + "?next=" +
    encodeURIComponent(location.pathname + location.search).replace(/%2F/g, "/");

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"), thread: $("thread"), messages: $("messages"), empty: $("empty-state"),
    prompt: $("prompt"), send: $("send"), stop: $("stop"), status: $("status"),
    model: $("model"), system: $("system-prompt"), temperature: $("temperature"),
    temperatureRange: $("temperature-range"), maxTokens: $("max-tokens"), limits: $("limits"),
    conversations: $("conversations"), newChat: $("new-chat"), sidebar: $("sidebar"),
    settings: $("settings"), backdrop: $("backdrop"), toggleSidebar: $("toggle-sidebar"),
    toggleSettings: $("toggle-settings"), closeSettings: $("close-settings"),
    search: $("search-conversations"), historyNote: $("history-note"), undo: $("undo"),
    undoText: $("undo-text"), undoButton: $("undo-button"), exportLinks: $("export-links"),
    exportMd: $("export-md"), exportJson: $("export-json"), tools: $("tools"), toolsHelp: $("tools-help"),
    toolChoice: $("tool-choice"),
  };

  const state = {
    conversations: [], // newest first; a new chat joins the list with its first message
    current: null,     // the conversation on screen
    gen: null,         // the one running generation: {id, conv, msg, sent, stopping, startedAt}
    ws: null,
    connected: false,
    everConnected: false,
    retryMs: MIN_RETRY_MS,
    retryTimer: null,
    stickToBottom: true, // follow the stream unless the user scrolled up to read
    saveTimer: null,
    unsaved: new Set(), // conversations changed since this tab last wrote them
    statusTimer: null,
    found: null,       // the ids the search found (null: no search)
    arriving: new Map(), // id -> a conversation another tab made, while it loads
    countdownTimer: null,
    searchTimer: null,
    undoTimer: null,
  };
  const settings = loadSettings();

  // ---------------------------------------------------------------- helpers

  function readConfig() {
    let c = {};
    try {
      c = JSON.parse(document.getElementById("chat-config").textContent) || {};
    } catch (e) { /* fall through to defaults: the page still renders */ }
    return {
      models: Array.isArray(c.models) ? c.models.map(String) : [],
      default_model: typeof c.default_model === "string" ? c.default_model : "",
      max_tokens: Number.isInteger(c.max_tokens) && c.max_tokens > 0 ? c.max_tokens : 256,
      temperature: typeof c.temperature === "number" ? c.temperature : 0,
      user: typeof c.user === "string" ? c.user : "",
      ws_path: typeof c.ws_path === "string" ? c.ws_path : "/ws/chat",
      login_url: typeof c.login_url === "string" ? c.login_url : "",
      limits: c.limits && typeof c.limits === "object" ? c.limits : {},
      history: c.history === "browser" ? "browser" : "server",
      conversations_url: typeof c.conversations_url === "string" ? c.conversations_url : "/chat/conversations/",
    };
  }

  // Ids match the server's [A-Za-z0-9_-]{1,64}; crypto.randomUUID needs a secure context.
  function newId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }
  function isId(v) { return typeof v === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(v); }
  function str(v) { return typeof v === "string" ? v : ""; }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }

  function makeButton(className, text, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    if (label) { b.setAttribute("aria-label", label); b.title = label; }
    return b;
  }

  function makeText(tag, className, text) {
    const e = document.createElement(tag);
    e.className = className;
    e.textContent = text;
    return e;
  }

  function titleFrom(messages) {
    const first = messages.find((m) => m.role === "user");
    const text = first ? first.content.replace(/\s+/g, " ").trim() : "";
    return text.length > TITLE_LENGTH ? text.slice(0, TITLE_LENGTH - 1) + "…" : text;
  }

  function validModel(id) {
    if (config.models.includes(id)) return id;
    if (config.models.includes(config.default_model)) return config.default_model;
    return config.models[0] || "";
  }

  function setStatus(text, kind, clearAfterMs) {
    clearTimeout(state.statusTimer);
    ui.status.textContent = text || "";
    ui.status.dataset.kind = kind || "";
    if (clearAfterMs) state.statusTimer = setTimeout(() => setStatus(""), clearAfterMs);
  }

  // ---------------------------------------------------------------- storage

  function loadConversations() {
    migrateList();
    const list = [];
    try {
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (key && key.startsWith(CONVERSATION_PREFIX)) list.push(key);
      }
    } catch (e) { return []; } // storage disabled
    return list.map(readConversation).filter(Boolean).sort(newestFirst);
  }

  function newestFirst(a, b) { return b.updatedAt - a.updatedAt; }

  function readConversation(key) {
    let raw = null;
    try { raw = localStorage.getItem(key); } catch (e) { return null; }
    if (raw === null) return null;
    const conv = parseConversation(raw, key, false);
    if (!conv) {
      // Corrupt or foreign data: drop it rather than leave a broken page.
      try { localStorage.removeItem(key); } catch (_) { /* nothing more to do */ }
      setStatus("A saved conversation could not be read and was removed.", "error");
    }
    return conv;
  }

  // The conversation stored under `key`, or null. `live`: another tab has just written
  // it, so an answer in it that is streaming is streaming there.
  function parseConversation(raw, key, live) {
    let conv = null;
    try { conv = cleanConversation(JSON.parse(raw), live); } catch (e) { return null; }
    return conv && key === CONVERSATION_PREFIX + conv.id ? conv : null;
  }

  // Conversations kept in one item (by pages before this one) move to one item each.
  function migrateList() {
    let list = null;
    try { list = JSON.parse(localStorage.getItem(LIST_KEY)); } catch (e) { list = null; }
    if (!Array.isArray(list)) return;
    for (const conv of list.map((c) => cleanConversation(c, false)).filter(Boolean)) writeConversation(conv);
    try { localStorage.removeItem(LIST_KEY); } catch (e) { /* read again next time: the same ids */ }
  }

  function cleanUsage(u) {
    if (!u || typeof u !== "object") return null;
    return { prompt_tokens: num(u.prompt_tokens), completion_tokens: num(u.completion_tokens), total_tokens: num(u.total_tokens) };
  }

  function cleanToolCalls(calls) {
    if (!Array.isArray(calls)) return [];
    return calls.filter((c) => c && typeof c === "object" && isId(c.id))
      .map((c) => ({ id: c.id, name: str(c.name), arguments: str(c.arguments) }));
  }

  function cleanMessage(m, live) {
    if (!m || !["user", "assistant", "tool"].includes(m.role) || typeof m.content !== "string") return null;
    const msg = {
      id: isId(m.id) ? m.id : newId(), role: m.role, content: m.content, reasoning: str(m.reasoning),
      state: STATES.includes(m.state) ? m.state : "done",
      finishReason: str(m.finishReason) || null, usage: cleanUsage(m.usage), model: str(m.model),
      durationMs: num(m.durationMs), thoughtMs: num(m.thoughtMs), requestId: str(m.requestId), error: null,
      toolCalls: cleanToolCalls(m.toolCalls),
    };
    if (m.role === "tool") Object.assign(msg, { toolCallId: str(m.toolCallId), toolName: str(m.toolName) });
    const answers = m.role === "assistant" && Array.isArray(m.answers)
      ? m.answers.map((a) => cleanMessage({ ...a, role: "assistant" }, false)).filter(Boolean).map(answerOf) : [];
    if (answers.length) {
      msg.answers = answers;
      msg.answerIndex = Math.min(Math.max(0, Math.trunc(num(m.answerIndex))), answers.length);
    }
    if (m.error && typeof m.error === "object") {
      msg.error = { status: num(m.error.status), message: str(m.error.message), code: str(m.error.code),
                    retryAfter: num(m.error.retryAfter), at: num(m.error.at) };
    }
    if (msg.state === "streaming" && !live) { // the page was closed while this answer streamed
      msg.state = "error";
      msg.error = { status: 0, message: "Interrupted: the page was closed.", code: "" };
    }
    if (msg.role !== "assistant") msg.state = "done";
    return msg;
  }

  // An answer's own fields: what it keeps of itself among the question's other answers.
  const ANSWER_FIELDS = ["content", "reasoning", "state", "finishReason", "usage", "model", "durationMs", "thoughtMs",
                         "requestId", "error", "toolCalls"];
  function answerOf(msg) {
    return Object.fromEntries(ANSWER_FIELDS.map((name) => [name, msg[name]]));
  }

  // Every answer to the question of `msg`, in the order given; `msg` at its place.
  function allAnswers(msg) {
    const others = msg.answers || [];
    const at = msg.answerIndex === undefined ? others.length : msg.answerIndex;
    return [...others.slice(0, at), answerOf(msg), ...others.slice(at)];
  }

  // Another of the last question's answers shown in place of this one (and sent on with
  // the conversation from now on).
  function showAnswer(msg, index) {
    const all = allAnswers(msg);
    if (state.gen || index < 0 || index >= all.length) return;
    Object.assign(msg, all[index], { answers: all.filter((_, k) => k !== index), answerIndex: index });
    rerenderMessage(msg);
    renderComposer();
    if (isSaved(state.current)) saveNow(state.current);
  }

  function cleanConversation(c, live) {
    if (!c || typeof c !== "object" || !Array.isArray(c.messages)) return null;
    const messages = c.messages.map((m) => cleanMessage(m, live)).filter(Boolean);
    if (!messages.length) return null;
    return {
      id: isId(c.id) ? c.id : newId(), title: str(c.title) || titleFrom(messages),
      model: str(c.model), system: str(c.system), tools: str(c.tools), toolChoice: toolChoice(c.toolChoice),
      createdAt: num(c.createdAt) || Date.now(), updatedAt: num(c.updatedAt) || Date.now(), messages,
    };
  }

  // Write `conv` now, with any other conversation waiting to be written.
  function saveNow(conv) {
    if (conv) state.unsaved.add(conv);
    clearTimeout(state.saveTimer);
    state.saveTimer = null;
    for (const c of state.unsaved) if (isSaved(c)) writeConversation(c); // not one deleted meanwhile
    state.unsaved.clear();
    for (const old of state.conversations.splice(MAX_CONVERSATIONS)) forgetConversation(old);
  }

  // While tokens stream, save at most once a second instead of on every delta.
  function saveSoon(conv) {
    state.unsaved.add(conv);
    if (!state.saveTimer) state.saveTimer = setTimeout(() => saveNow(), 1000);
  }

  function writeConversation(conv) {
    if (ON_SERVER) { putConversation(conv); return; }
    try {
      localStorage.setItem(CONVERSATION_PREFIX + conv.id, JSON.stringify(conv));
    } catch (e) {
      setStatus("Could not save conversations in this browser (storage full or disabled).", "error");
    }
  }

  function forgetConversation(conv) {
    if (ON_SERVER) return; // the server keeps every conversation until it is deleted
    try { localStorage.removeItem(CONVERSATION_PREFIX + conv.id); } catch (e) { /* storage disabled */ }
  }

  function loadSettings() {
    let s = {};
    try { s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {}; } catch (e) { s = {}; }
    return {
      temperature: clampTemperature(s.temperature),
      maxTokens: cleanMaxTokens(s.maxTokens),
      model: str(s.model),
      system: str(s.system),
      tools: str(s.tools),
      toolChoice: toolChoice(s.toolChoice),
    };
  }

  function saveSettings() {
    try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings)); } catch (e) { /* not fatal */ }
  }

  function clampTemperature(v) {
    const t = parseFloat(v);
    if (!isFinite(t)) return Math.min(2, Math.max(0, config.temperature));
    return Math.round(Math.min(2, Math.max(0, t)) * 100) / 100;
  }

  function cleanMaxTokens(v) {
    const n = parseInt(v, 10);
    return isFinite(n) && n >= 1 ? n : config.max_tokens;
  }

  // ---------------------------------------------------------------- history on the server

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // A request to chat/history.py: {status, data} (status 0: no answer).
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", cache: "no-store",
                   headers: { "X-CSRFToken": csrfToken(), "X-Chat-Tab": TAB } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
      init.keepalive = init.body.length < 60000; // a save as the page closes still goes
    }
    try {
      const res = await fetch(config.conversations_url + path, init);
      let data = null;
      try { data = await res.json(); } catch (e) { data = null; }
      return { status: res.status, data };
    } catch (e) {
      return { status: 0, data: null };
    }
  }

  function fromSummary(s) {
    return {
      id: s.id, title: str(s.title), model: str(s.model), system: "", tools: "", toolChoice: "auto", createdAt: num(s.createdAt),
      updatedAt: num(s.updatedAt), version: num(s.version), messages: [], loaded: false,
    };
  }

  // What the server keeps of a conversation (not this tab's bookkeeping).
  function serialize(conv) {
    return {
      id: conv.id, title: conv.title, model: conv.model, system: conv.system, createdAt: conv.createdAt,
      updatedAt: conv.updatedAt, version: conv.version || 0, messages: conv.messages,
      settings: { temperature: settings.temperature, maxTokens: settings.maxTokens, tools: conv.tools,
                  toolChoice: conv.toolChoice },
    };
  }

  // Saves of one conversation go one after the other, each with the version the last
  // one returned; a change made meanwhile is saved once that one is back.
  async function putConversation(conv) {
    if (conv.saving) { conv.dirty = true; return; }
    conv.saving = true;
    try {
      do {
        conv.dirty = false;
        const res = await api("PUT", conv.id + "/", serialize(conv));
        if (res.status === 200) {
          conv.version = res.data.version;
        } else if (res.status === 409) {
          await tookElsewhere(conv);
        } else {
          setStatus("Could not save the conversation on the server; it is kept here until the next change.", "error");
          break;
        }
      } while (conv.dirty);
    } finally {
      conv.saving = false;
    }
  }

  // Another tab or browser saved `conv` since this tab read it: take theirs, unless this
  // tab is answering in it (its answer is the newer), then save ours over it.
  async function tookElsewhere(conv) {
    const res = await api("GET", conv.id + "/");
    if (res.status !== 200) return;
    if (state.gen && state.gen.conv === conv) {
      conv.version = num(res.data.version);
      conv.dirty = true;
      return;
    }
    fill(conv, res.data, true);
    if (state.current === conv) renderAll();
    else renderConversationList();
    setStatus("This conversation was changed in another tab; it shows that version now.", "info", 4000);
  }

  function fill(conv, data, live) {
    const clean = cleanConversation({ ...data, messages: Array.isArray(data.messages) ? data.messages : [] }, live);
    Object.assign(conv, {
      title: str(data.title), model: str(data.model), system: str(data.system),
      tools: str(data.settings && data.settings.tools), toolChoice: toolChoice(data.settings && data.settings.toolChoice),
      createdAt: num(data.createdAt),
      updatedAt: num(data.updatedAt), version: num(data.version), messages: clean ? clean.messages : [], loaded: true,
    });
  }

  async function loadFull(conv, live) {
    const res = await api("GET", conv.id + "/");
    if (res.status !== 200) return false;
    fill(conv, res.data, live);
    return true;
  }

  // The list as the server has it; a conversation this tab is answering in stays as it is.
  async function refreshList() {
    const res = await api("GET", "");
    if (res.status !== 200 || !res.data || !Array.isArray(res.data.conversations)) return false;
    const byId = new Map(state.conversations.map((c) => [c.id, c]));
    const fresh = res.data.conversations.filter((c) => c && isId(c.id)).map((summary) => {
      const conv = byId.get(summary.id);
      if (!conv) return fromSummary(summary);
      if (num(summary.version) > (conv.version || 0) && !(state.gen && state.gen.conv === conv) && !conv.saving) {
        Object.assign(conv, { title: str(summary.title), updatedAt: num(summary.updatedAt), loaded: false });
      }
      return conv;
    });
    // Kept as well: those this tab made and has not yet seen saved, and the one it is
    // answering in (deleted elsewhere meanwhile: this tab's answer saves it again).
    const keep = state.conversations.filter((c) => !fresh.includes(c) &&
      (!c.version || c.saving || state.unsaved.has(c) || (state.gen && state.gen.conv === c)));
    state.conversations = [...keep, ...fresh].sort(newestFirst);
    if (state.current && state.current.version && !isSaved(state.current)) {
      state.current = state.conversations[0] || makeConversation(); // deleted elsewhere
    }
    if (state.current && !state.current.loaded && isSaved(state.current)) await loadFull(state.current, true);
    renderAll();
    return true;
  }

  // Conversations an earlier page kept in this browser go to the server once.
  async function moveLocalConversations() {
    for (const conv of loadConversations()) {
      const res = await api("PUT", conv.id + "/", { ...serialize(conv), version: 0 });
      if (res.status === 200 || res.status === 409) {
        try { localStorage.removeItem(CONVERSATION_PREFIX + conv.id); } catch (e) { /* storage disabled */ }
      }
    }
  }

  // A "history" frame: one of the user's conversations changed in another tab or browser.
  async function onHistory(m) {
    if (!isId(m.id) || m.tab === TAB) return;
    if (state.gen && state.gen.conv.id === m.id) return; // only this tab writes it meanwhile
    const conv = state.conversations.find((c) => c.id === m.id);
    if (m.deleted) {
      if (!conv) return;
      state.conversations = state.conversations.filter((c) => c !== conv);
      if (state.current === conv) { state.current = state.conversations[0] || makeConversation(); await openLoaded(); }
      renderAll();
      return;
    }
    if (conv && num(m.version) <= (conv.version || 0)) return;
    // A new one: frames about it may come faster than it loads; they share one object.
    const target = conv || state.arriving.get(m.id) || fromSummary({ id: m.id });
    if (!conv) state.arriving.set(m.id, target);
    const loaded = await loadFull(target, true);
    state.arriving.delete(m.id);
    if (!loaded) return;
    if (!isSaved(target)) state.conversations.push(target);
    state.conversations.sort(newestFirst);
    if (state.current === target) renderAll();
    else renderConversationList();
  }

  async function openLoaded() {
    if (ON_SERVER && state.current && !state.current.loaded && isSaved(state.current)) {
      await loadFull(state.current, false);
    }
  }

  function offerUndo(conv) {
    clearTimeout(state.undoTimer);
    ui.undoText.textContent = "Deleted “" + (conv.title || "Untitled") + "”.";
    ui.undo.hidden = false;
    ui.undoButton.onclick = async () => {
      ui.undo.hidden = true;
      const res = await api("POST", conv.id + "/restore/");
      if (res.status !== 200) { setStatus("The conversation could not be restored.", "error"); return; }
      conv.version = num(res.data.version);
      if (!isSaved(conv)) state.conversations = [...state.conversations, conv].sort(newestFirst);
      openConversation(conv);
    };
    state.undoTimer = setTimeout(() => { ui.undo.hidden = true; }, 10000);
  }

  // The list narrowed to what the search box asks for: on the server by its search, in
  // the browser by the text of the conversations here.
  async function search() {
    const query = ui.search.value.trim();
    if (!query) { state.found = null; renderConversationList(); return; }
    if (ON_SERVER) {
      const res = await api("GET", "?q=" + encodeURIComponent(query));
      if (ui.search.value.trim() !== query || res.status !== 200) return; // typed on, or failed
      state.found = new Set(res.data.conversations.map((c) => c.id));
    } else {
      const q = query.toLowerCase();
      state.found = new Set(state.conversations.filter((c) => (c.title + " " + c.system + " " +
        c.messages.map((m) => m.content).join(" ")).toLowerCase().includes(q)).map((c) => c.id));
    }
    renderConversationList();
  }

  function rename(conv) {
    const title = window.prompt("Rename the conversation", conv.title);
    if (title === null || !title.trim()) return;
    conv.title = title.trim().slice(0, 200);
    renderConversationList();
    saveNow(conv);
  }

  // ---------------------------------------------------------------- conversations

  function makeConversation() {
    const now = Date.now();
    return {
      id: newId(), title: "", model: validModel(settings.model), system: settings.system, tools: settings.tools,
      toolChoice: settings.toolChoice,
      createdAt: now, updatedAt: now, messages: [],
    };
  }

  function isSaved(conv) { return state.conversations.includes(conv); }

  function touch(conv) {
    conv.updatedAt = Date.now();
    if (!isSaved(conv)) state.conversations.unshift(conv);
    else if (state.conversations[0] !== conv) { // keep the list newest first
      state.conversations.splice(state.conversations.indexOf(conv), 1);
      state.conversations.unshift(conv);
    }
  }

  async function openConversation(conv) {
    state.current = conv;
    closeDrawers();
    if (ON_SERVER && !conv.loaded && isSaved(conv)) {
      ui.messages.replaceChildren(makeText("p", "loading", "Loading…"));
      delete ui.messages.dataset.conversation;
      if (!(await loadFull(conv, false))) setStatus("The conversation could not be loaded.", "error");
      if (state.current !== conv) return; // another was opened meanwhile
    }
    renderAll();
  }

  function newChat() {
    if (isSaved(state.current) || state.current.messages.length) openConversation(makeConversation());
    else closeDrawers();
    ui.prompt.focus();
  }

  async function deleteConversation(conv) {
    if (state.gen && state.gen.conv === conv) stopGeneration();
    state.conversations = state.conversations.filter((c) => c !== conv);
    state.unsaved.delete(conv);
    forgetConversation(conv);
    if (ON_SERVER) {
      const res = await api("DELETE", conv.id + "/");
      if (res.status === 200) offerUndo(conv);
    }
    if (state.current === conv) {
      state.current = state.conversations[0] || makeConversation();
      await openLoaded();
    }
    renderAll();
  }

  // ---------------------------------------------------------------- Markdown

  const pendingRender = new WeakSet(); // streaming answers whose text changed since drawn
  const autoRetried = new WeakSet(); // answers that are a refused turn asked again by itself

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // Raw HTML in an answer is text; a picture is its description (the page fetches
  // nothing a model names). Without the libraries (they failed to load) answers are text.
  const markdown = window.marked && window.DOMPurify ? new window.marked.Marked({
    gfm: true,
    breaks: true,
    renderer: {
      html(token) { return escapeHtml(token.text); },
      image(token) { return escapeHtml(token.text || token.href || ""); },
    },
  }) : null;
  const PURIFY = {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
    FORBID_ATTR: ["style"],
  };
  if (markdown) {
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
    });
  }

  // An assistant's answer into its .content element: Markdown, or text without it.
  function fillContent(el, text) {
    if (!markdown || !text) { el.textContent = text; return; }
    let fragment;
    try {
      fragment = window.DOMPurify.sanitize(markdown.parse(text).trim(), PURIFY);
    } catch (e) {
      el.textContent = text;
      return;
    }
    el.replaceChildren(fragment);
    el.classList.add("markdown");
    for (const code of el.querySelectorAll("pre > code")) decorateCode(code);
  }

  // A code block: highlighted, under a bar naming its language, with a Copy button.
  function decorateCode(code) {
    const language = ((code.className.match(/language-([\w+-]+)/) || [])[1]) || "";
    if (window.hljs && (!language || window.hljs.getLanguage(language))) {
      try { window.hljs.highlightElement(code); } catch (e) { /* left as it is */ }
    }
    const pre = code.parentElement;
    const block = document.createElement("div");
    block.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    bar.append(makeText("span", "code-language", language || "code"));
    const copy = makeButton("copy-code", "Copy", "Copy code");
    copy.addEventListener("click", () => copyText(code.textContent, copy));
    bar.append(copy);
    pre.replaceWith(block);
    block.append(bar, pre);
  }

  // While an answer streams, it is drawn again at most every 30 ms, not per token.
  function renderSoon(msg) {
    if (pendingRender.has(msg)) return;
    pendingRender.add(msg);
    setTimeout(() => {
      pendingRender.delete(msg);
      const el = findMessageEl(msg);
      if (!el) return;
      fillContent(el.querySelector(".content"), msg.content);
      scrollToBottom();
    }, 30);
  }

  // ---------------------------------------------------------------- rendering

  function renderAll() {
    renderConversationList();
    const conv = state.current;
    conv.model = validModel(conv.model);
    ui.model.value = conv.model;
    ui.system.value = conv.system;
    ui.tools.value = conv.tools;
    ui.toolChoice.value = conv.toolChoice;
    showToolsHelp();
    renderMessages();
  }

  // The current conversation's export links, once the server has it.
  function renderExport() {
    const conv = state.current;
    const exportable = ON_SERVER && isSaved(conv);
    ui.exportLinks.hidden = !exportable;
    if (exportable) {
      ui.exportMd.href = config.conversations_url + conv.id + "/export/?format=md";
      ui.exportJson.href = config.conversations_url + conv.id + "/export/?format=json";
    }
  }

  function renderConversationList() {
    const shown = state.found ? state.conversations.filter((c) => state.found.has(c.id)) : state.conversations;
    const items = shown.map((conv) => {
      const li = document.createElement("li");
      li.className = "conversation";
      li.dataset.id = conv.id;
      if (conv === state.current) {
        li.classList.add("active");
        li.setAttribute("aria-current", "true");
      }
      const title = conv.title || "Untitled";
      const open = makeButton("conversation-open", title);
      open.title = title;
      open.addEventListener("click", () => openConversation(conv));
      const edit = makeButton("rename", "✎", "Rename conversation: " + title);
      edit.addEventListener("click", () => rename(conv));
      const del = makeButton("delete", "×", "Delete conversation: " + title);
      del.addEventListener("click", () => deleteConversation(conv));
      li.append(open, edit, del);
      return li;
    });
    ui.conversations.replaceChildren(...items);
    renderExport();
  }

  function renderMessages() {
    const msgs = state.current.messages;
    ui.messages.dataset.conversation = state.current.id; // the one shown (not while it loads)
    ui.messages.replaceChildren(...msgs.map((m, i) => buildMessage(m, i === msgs.length - 1)));
    ui.empty.hidden = msgs.length > 0;
    renderComposer();
    state.stickToBottom = true;
    scrollToBottom();
  }

  function buildMessage(msg, isLast) {
    const div = document.createElement("div");
    div.className = "message " + msg.role;
    div.dataset.state = msg.state;
    div.dataset.mid = msg.id;
    if (msg.role === "assistant" && msg.reasoning) div.append(buildReasoning(msg));
    if (msg.role === "tool") {
      div.append(buildFolded("tool-result", "Result of ", msg.toolName, msg.content));
      return div;
    }
    if (msg.role !== "assistant") {
      div.append(makeText("div", "content", msg.content));
      const edit = makeButton("edit", "Edit", "Edit and send again");
      edit.addEventListener("click", () => startEditing(div, msg));
      div.append(edit);
      return div;
    }
    const content = document.createElement("div");
    content.className = "content";
    fillContent(content, msg.content);
    div.append(content);
    for (const call of msg.toolCalls || []) div.append(buildFolded("tool-call", "Called ", call.name, prettyJson(call.arguments)));

    if (msg.state === "error") div.append(buildError(msg.error));
    const foot = document.createElement("div");
    foot.className = "message-foot";
    const meta = makeText("span", "meta", metaText(msg));
    if (msg.requestId) meta.title = "Request " + msg.requestId; // what an administrator finds in the usage records
    foot.append(meta);
    if (msg.content || msg.state === "streaming") { // nothing to copy from an empty answer
      const copy = makeButton("copy", "Copy", "Copy answer");
      copy.addEventListener("click", () => copyMessage(msg, copy));
      foot.append(copy);
    }
    // The last question's answers, when it was answered more than once: paged through.
    if (isLast && msg.answers && msg.answers.length) foot.append(buildPager(msg));
    // A refused or failed last answer can be asked for again without retyping; a
    // finished one, answered anew.
    if (isLast && !state.gen && msg.state !== "streaming") {
      const retry = msg.state === "error" ? makeButton("retry", "Retry", "Ask again")
        : makeButton("retry regenerate", "Regenerate", "Answer again");
      retry.addEventListener("click", () => retryLast());
      foot.append(retry);
    }
    div.append(foot);
    return div;
  }

  function buildPager(msg) {
    const pager = document.createElement("span");
    pager.className = "pager";
    const count = msg.answers.length + 1;
    const at = msg.answerIndex;
    const previous = makeButton("previous-answer", "‹", "Previous answer");
    const next = makeButton("next-answer", "›", "Next answer");
    previous.disabled = at === 0 || !!state.gen;
    next.disabled = at === count - 1 || !!state.gen;
    previous.addEventListener("click", () => showAnswer(msg, at - 1));
    next.addEventListener("click", () => showAnswer(msg, at + 1));
    pager.append(previous, makeText("span", "answer-number", (at + 1) + " / " + count), next);
    return pager;
  }

  // A reasoning model's thinking, folded above its answer (text only, like the answer).
  function buildReasoning(msg) {
    const details = document.createElement("details");
    details.className = "reasoning";
    const title = msg.thoughtMs > 0 ? "Thought for " + waitText(msg.thoughtMs)
      : msg.state === "streaming" ? "Thinking…" : "Thought";
    details.append(makeText("summary", "reasoning-title", title), makeText("div", "reasoning-text", msg.reasoning));
    return details;
  }

  // A tool call or a tool's result: folded, its name in the title, its JSON (or text) inside.
  function buildFolded(className, title, name, text) {
    const details = document.createElement("details");
    details.className = className;
    const summary = makeText("summary", "", title);
    summary.append(makeText("code", "tool-name", name));
    details.append(summary, makeText("pre", "tool-text", text));
    return details;
  }

  function prettyJson(text) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }

  function buildError(error) {
    const err = error || { status: 0, message: "Something went wrong.", code: "" };
    const box = document.createElement("div");
    box.className = "error";
    box.setAttribute("role", "alert");
    let headline = "The answer failed.";
    if (err.status === 429 && err.code === "server_concurrency_limit") headline = "The server is busy.";
    else if (err.status === 429) headline = "You have reached your chat limit.";
    else if (err.status === 401 || err.status === 403) headline = "You may not chat right now.";
    else if (err.status === 0) headline = "The answer was interrupted.";
    box.append(makeText("strong", "error-title", headline));
    if (err.message && err.message !== headline) box.append(makeText("span", "error-detail", err.message));
    const until = err.status === 429 && err.retryAfter > 0 ? err.at + err.retryAfter * 1000 : 0;
    if (until > Date.now()) {
      const countdown = makeText("span", "countdown", "");
      countdown.dataset.until = String(until);
      box.append(countdown);
      clearTimeout(state.countdownTimer);
      state.countdownTimer = setTimeout(tickCountdowns, 0); // once the message is on the page
    }
    return box;
  }

  function waitText(ms) {
    const s = Math.max(1, Math.ceil(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.ceil(s / 60) + " min";
    return Math.ceil(s / 3600) + " h";
  }

  // A refused turn's wait, counted down each second; when it ends while shown, the last
  // turn is asked again once by itself (a retry refused again counts down, no more).
  function tickCountdowns() {
    const now = Date.now();
    let running = false;
    for (const el of document.querySelectorAll("#messages .countdown[data-until]")) {
      const left = Number(el.dataset.until) - now;
      if (left > 0) {
        el.textContent = "You can send another message in " + waitText(left) + ".";
        running = true;
        continue;
      }
      el.textContent = "You can send another message now.";
      delete el.dataset.until;
      const message = el.closest(".message");
      const conv = state.current;
      const last = conv.messages[conv.messages.length - 1];
      if (message && last && message.dataset.mid === last.id && !autoRetried.has(last)) retryLast(true);
    }
    clearTimeout(state.countdownTimer);
    if (running) state.countdownTimer = setTimeout(tickCountdowns, 1000 - (now % 1000) || 1000);
  }

  function metaText(msg) {
    const parts = [];
    if (msg.model) parts.push(msg.model);
    const tokens = msg.usage ? msg.usage.completion_tokens : null;
    if (msg.state === "streaming") parts.push("generating…");
    if (msg.state === "stopped") parts.push("stopped");
    if (tokens !== null && msg.state !== "streaming") {
      parts.push(tokens + (tokens === 1 ? " token" : " tokens"));
      if (msg.durationMs > 0 && tokens > 0) parts.push((tokens / (msg.durationMs / 1000)).toFixed(1) + " tokens/s");
    }
    if (msg.state === "done" && msg.finishReason === "length") parts.push("reached max tokens");
    if (msg.state === "error" && msg.error && msg.error.code) parts.push(msg.error.code);
    return parts.join(" · ");
  }

  function findMessageEl(msg) {
    for (const child of ui.messages.children) if (child.dataset.mid === msg.id) return child;
    return null; // its conversation is not on screen
  }

  function rerenderMessage(msg) {
    const old = findMessageEl(msg);
    if (!old) return;
    const msgs = state.current.messages;
    const fresh = buildMessage(msg, msgs[msgs.length - 1] === msg);
    const wasOpen = old.querySelector("details.reasoning[open]");
    if (wasOpen && fresh.querySelector("details.reasoning")) fresh.querySelector("details.reasoning").open = true;
    old.replaceWith(fresh);
    scrollToBottom();
  }

  function scrollToBottom() {
    if (state.stickToBottom) ui.thread.scrollTop = ui.thread.scrollHeight;
  }

  // ---------------------------------------------------------------- copy

  function copyMessage(msg, button) { copyText(msg.content, button); } // the answer as written, Markdown and all

  function copyText(text, button) {
    const done = (ok) => {
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done(true), () => done(legacyCopy(text)));
    } else {
      done(legacyCopy(text)); // plain http on another host: no Clipboard API
    }
  }

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "copy-buffer";
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    return ok;
  }

  // ---------------------------------------------------------------- generations

  // The messages of a request: the system prompt, then the conversation as the model
  // sees it: questions, answers (with the tools they called) and the tools' results. An
  // answer that failed is left out with the question it answered, so turns alternate.
  function requestMessages(conv) {
    const out = [];
    if (conv.system.trim()) out.push({ role: "system", content: conv.system });
    for (const m of conv.messages) {
      if (m.role === "user") {
        out.push({ role: "user", content: m.content });
      } else if (m.role === "tool") {
        out.push({ role: "tool", tool_call_id: m.toolCallId, content: m.content });
      } else if ((m.state === "done" || m.state === "stopped") && (m.content || m.toolCalls.length)) {
        const answer = { role: "assistant", content: m.content || null };
        if (m.toolCalls.length) {
          answer.tool_calls = m.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
        }
        out.push(answer);
      } else if (out.length && out[out.length - 1].role === "user") {
        out.pop();
      }
    }
    return out;
  }

  // The first call of the last answer that has no result yet: what the composer sends.
  function pendingCall(conv) {
    const msgs = conv.messages;
    let i = msgs.length - 1;
    const answered = new Set();
    for (; i >= 0 && msgs[i].role === "tool"; i--) answered.add(msgs[i].toolCallId);
    const last = msgs[i];
    if (!last || last.role !== "assistant" || last.state !== "done") return null;
    return (last.toolCalls || []).find((c) => !answered.has(c.id)) || null;
  }

  // The composer asks for a question, or for the result of the call the model made.
  function renderComposer() {
    const call = pendingCall(state.current);
    ui.prompt.placeholder = call ? "The result of " + call.name + " (JSON or text)…" : "Send a message…";
    ui.prompt.setAttribute("aria-label", call ? "Result of " + call.name : "Message");
  }

  function sendPrompt() {
    const text = ui.prompt.value;
    if (!text.trim() || state.gen) return;
    if (!config.models.length) { setStatus("No models are available to you.", "error"); return; }
    const conv = state.current;
    const last = conv.messages[conv.messages.length - 1];
    if (last && last.state === "streaming") { // while this tab answers nothing, so another tab does
      setStatus("Another tab is still answering in this conversation.", "info", 4000);
      return;
    }
    const call = pendingCall(conv);
    if (call) {
      conv.messages.push({ id: newId(), role: "tool", content: text, state: "done", toolCallId: call.id, toolName: call.name });
    } else {
      conv.messages.push({ id: newId(), role: "user", content: text, state: "done" });
    }
    if (!conv.title) conv.title = titleFrom(conv.messages);
    ui.prompt.value = "";
    autoGrow();
    if (pendingCall(conv)) { // the model made several calls: their results first, then it answers
      touch(conv);
      renderMessages();
      saveNow(conv);
      return;
    }
    startGeneration(conv);
  }

  // The last answer asked for again (its record stays in the usage records).
  function retryLast(automatic) {
    const conv = state.current;
    const last = conv.messages[conv.messages.length - 1];
    if (state.gen || !last || last.role !== "assistant" || last.state === "streaming") return;
    conv.messages.pop();
    // A failed answer is not kept; the answers before it are, to page through.
    const earlier = allAnswers(last).filter((a) => a.state !== "error");
    const msg = startGeneration(conv, earlier);
    if (automatic === true) autoRetried.add(msg);
  }

  // A user message edited in place on the page, then sent in a new conversation that
  // forks from it: the turns before it, the edited message, a new answer. The original
  // conversation stays as it was.
  function startEditing(div, msg) {
    if (state.gen || div.querySelector(".edit-box")) return;
    const box = document.createElement("div");
    box.className = "edit-box";
    const area = document.createElement("textarea");
    area.value = msg.content;
    area.setAttribute("aria-label", "Edited message");
    const send = makeButton("btn btn-primary", "Send", "Send the edited message in a new conversation");
    const cancel = makeButton("btn", "Cancel");
    const actions = document.createElement("div");
    actions.className = "edit-actions";
    actions.append(cancel, send);
    box.append(area, actions);
    div.classList.add("editing");
    div.append(box);
    area.focus();
    cancel.addEventListener("click", () => { box.remove(); div.classList.remove("editing"); });
    send.addEventListener("click", () => {
      const text = area.value;
      if (!text.trim() || state.gen) return;
      forkWith(state.current, msg, text);
    });
  }

  function forkWith(conv, msg, text) {
    const index = conv.messages.indexOf(msg);
    if (index < 0) return;
    const fork = makeConversation();
    fork.model = validModel(conv.model);
    fork.system = conv.system;
    fork.messages = conv.messages.slice(0, index).map((m) => ({ ...m, id: newId() }));
    fork.messages.push({ id: newId(), role: "user", content: text, state: "done" });
    fork.title = ((conv.title || titleFrom(fork.messages)) + " (edited)").slice(0, 200);
    state.current = fork;
    startGeneration(fork);
    renderAll();
  }

  function startGeneration(conv, earlier) {
    const history = requestMessages(conv);
    const msg = {
      id: newId(), role: "assistant", content: "", reasoning: "", state: "streaming", finishReason: null,
      usage: null, model: validModel(conv.model), durationMs: 0, error: null, toolCalls: [],
    };
    if (earlier && earlier.length) Object.assign(msg, { answers: earlier, answerIndex: earlier.length });
    conv.messages.push(msg);
    touch(conv);
    state.gen = { id: msg.id, conv, msg, history, sent: false, stopping: false, startedAt: 0 };
    setGenerating(true);
    renderConversationList();
    renderMessages();
    saveNow(conv);
    sendPending(); // or, if the socket is down, as soon as it is back
    return msg;
  }

  function sendPending() {
    const gen = state.gen;
    if (!gen || gen.sent || !state.connected) return;
    gen.sent = true;
    gen.startedAt = performance.now();
    const tools = parseTools(gen.conv.tools);
    state.ws.send(JSON.stringify({
      type: "chat", id: gen.id, model: gen.msg.model, messages: gen.history,
      temperature: settings.temperature, max_tokens: settings.maxTokens,
      ...(tools ? { tools, tool_choice: gen.conv.toolChoice } : {}),
    }));
  }

  function stopGeneration() {
    const gen = state.gen;
    if (!gen || gen.stopping) return;
    gen.stopping = true;
    ui.stop.disabled = true;
    if (gen.sent && state.connected) {
      state.ws.send(JSON.stringify({ type: "stop", id: gen.id })); // "done" (cancelled) follows
    } else {
      finishGeneration("stopped", { finishReason: "cancelled" }); // never reached the server
    }
  }

  function finishGeneration(newState, fields) {
    const gen = state.gen;
    if (!gen) return;
    Object.assign(gen.msg, fields, { state: newState });
    if (gen.startedAt) gen.msg.durationMs = performance.now() - gen.startedAt;
    if (gen.msg.reasoning && !gen.msg.thoughtMs) gen.msg.thoughtMs = gen.msg.durationMs; // thought, no answer
    state.gen = null;
    setGenerating(false);
    rerenderMessage(gen.msg);
    if (gen.conv === state.current) renderComposer();
    if (isSaved(gen.conv)) saveNow(gen.conv);
  }

  function setGenerating(on) {
    ui.app.dataset.generating = on ? "true" : "false";
    ui.send.hidden = on;
    ui.send.disabled = on;
    ui.stop.hidden = !on;
    ui.stop.disabled = !on;
    // Focus must not vanish with the button that is hidden.
    if (document.activeElement === (on ? ui.send : ui.stop)) ui.prompt.focus();
  }

  // ---------------------------------------------------------------- server messages

  function onServerMessage(data) {
    let m;
    try { m = JSON.parse(data); } catch (e) { return; }
    if (!m || typeof m !== "object") return;
    if (m.type === "history") { if (ON_SERVER) onHistory(m); return; }
    const gen = state.gen;
    // An error that names no generation (a frame the server could not read) belongs to
    // ours if it has not started yet; otherwise it is only a notice.
    const mine = gen && (m.id === gen.id || (m.type === "error" && m.id == null && !gen.started));
    if (!mine) {
      if (m.type === "error" && m.error) setStatus(str(m.error.message) || "The server reported an error.", "error");
      return;
    }
    if (m.type === "start") {
      gen.started = true;
      gen.startedAt = performance.now(); // tokens/s from admission, not from a wait in a queue
      gen.msg.requestId = str(m.request_id);
    } else if (m.type === "reasoning") {
      const text = str(m.text);
      if (!text) return;
      gen.started = true;
      gen.msg.reasoning += text;
      const el = findMessageEl(gen.msg);
      const box = el && el.querySelector(".reasoning-text");
      if (box) {
        box.appendChild(document.createTextNode(text));
        scrollToBottom();
      } else {
        rerenderMessage(gen.msg); // its first reasoning: the block appears
      }
      if (isSaved(gen.conv)) saveSoon(gen.conv);
    } else if (m.type === "delta") {
      const text = str(m.text);
      if (!text) return;
      gen.started = true;
      const thinking = gen.msg.reasoning && !gen.msg.thoughtMs;
      gen.msg.content += text;
      if (thinking) { // the answer begins: the thinking took this long
        gen.msg.thoughtMs = performance.now() - gen.startedAt;
        rerenderMessage(gen.msg);
      }
      const el = findMessageEl(gen.msg);
      if (el) renderSoon(gen.msg);
      if (isSaved(gen.conv)) saveSoon(gen.conv);
    } else if (m.type === "tool_calls") {
      if (!Array.isArray(m.tool_calls)) return;
      gen.started = true;
      gen.msg.toolCalls.push(...cleanToolCalls(m.tool_calls.map((c) => ({ id: c && c.id, ...(c && c.function) }))));
      rerenderMessage(gen.msg);
      if (isSaved(gen.conv)) saveSoon(gen.conv);
    } else if (m.type === "done") {
      const reason = str(m.finish_reason) || "stop";
      finishGeneration(reason === "cancelled" ? "stopped" : "done", { finishReason: reason, usage: cleanUsage(m.usage) });
    } else if (m.type === "error") {
      const e = m.error && typeof m.error === "object" ? m.error : {};
      if (m.request_id) gen.msg.requestId = str(m.request_id);
      finishGeneration("error", {
        error: { status: num(m.status), message: str(e.message) || "The answer failed.", code: str(e.code),
                 retryAfter: num(m.retry_after), at: Date.now() },
      });
    }
  }

  // ---------------------------------------------------------------- WebSocket

  function connect() {
    clearTimeout(state.retryTimer);
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + config.ws_path;
    let ws;
    try { ws = new WebSocket(url); } catch (e) { scheduleReconnect(); return; }
    state.ws = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      state.connected = true;
      state.retryMs = MIN_RETRY_MS;
      ui.app.dataset.connection = "open";
      // Clear only our own connection notice, not e.g. "No models are available".
      if (ui.status.dataset.kind === "warning") setStatus(state.everConnected ? "Reconnected." : "", "info", 2000);
      state.everConnected = true;
      sendPending();
    });
    ws.addEventListener("message", (ev) => onServerMessage(ev.data));
    ws.addEventListener("close", (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.connected = false;
      // An answer that was on its way is lost with the socket; one not yet sent waits.
      if (state.gen && state.gen.sent && state.gen.stopping) {
        finishGeneration("stopped", { finishReason: "cancelled" });
      } else if (state.gen && state.gen.sent) {
        finishGeneration("error", { error: { status: 0, message: "Connection lost.", code: "" } });
      }
      if (ev.code === 4401) { location.assign(LOGIN_URL); return; }
      ui.app.dataset.connection = "reconnecting";
      setStatus(state.everConnected ? "Connection lost — reconnecting…" : "Cannot reach the server — retrying…", "warning");
      // A refused handshake looks like any other failure to the browser; ask the page
      // itself whether the session is still logged in.
      if (opened) scheduleReconnect(); else checkLoginThenReconnect();
    });
  }

  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(MAX_RETRY_MS, state.retryMs * 2);
  }

  function checkLoginThenReconnect() {
    fetch(location.pathname, { redirect: "manual", credentials: "same-origin", cache: "no-store" })
      .then((res) => {
        if (res.type === "opaqueredirect" || res.status === 401 || res.status === 403) location.assign(LOGIN_URL);
        else scheduleReconnect();
      })
      .catch(scheduleReconnect); // server unreachable: keep trying
  }

  // ---------------------------------------------------------------- drawers (narrow screens)

  function setDrawer(name, open) {
    document.body.classList.toggle(name + "-open", open);
    const toggle = name === "sidebar" ? ui.toggleSidebar : ui.toggleSettings;
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    ui.backdrop.hidden = !document.body.matches(".sidebar-open, .settings-open");
  }

  function closeDrawers() {
    setDrawer("sidebar", false);
    setDrawer("settings", false);
  }

  // ---------------------------------------------------------------- controls

  function autoGrow() {
    const p = ui.prompt;
    p.style.height = "auto";
    p.style.height = Math.min(p.scrollHeight + (p.offsetHeight - p.clientHeight), 200) + "px";
  }

  function showSettings() {
    ui.temperature.value = String(settings.temperature);
    ui.temperatureRange.value = String(settings.temperature);
    ui.maxTokens.value = String(settings.maxTokens);
  }

  // The tools offered, as the API takes them: a JSON list of {"type": "function", ...};
  // null for none, or for text that is not such a list (its help says so).
  function parseTools(text) {
    if (!text.trim()) return null;
    try {
      const tools = JSON.parse(text);
      return Array.isArray(tools) && tools.length ? tools : null;
    } catch (e) {
      return null;
    }
  }

  // When the model calls a tool: "auto" (when it decides to) or "required" (every turn).
  function toolChoice(v) { return v === "required" ? "required" : "auto"; }

  function showToolsHelp() {
    const text = ui.tools.value;
    const wrong = text.trim() !== "" && parseTools(text) === null;
    ui.toolsHelp.textContent = wrong ? "Not a JSON list of tools: none are offered."
      : "Functions the model may call, as the API takes them (a JSON list). You answer each call with its result.";
    ui.toolsHelp.classList.toggle("error", wrong);
    ui.tools.setAttribute("aria-invalid", wrong ? "true" : "false");
  }

  function renderLimits() {
    const l = config.limits;
    const parts = [];
    if (Number.isInteger(l.max_concurrency)) parts.push("up to " + l.max_concurrency + " answer" + (l.max_concurrency === 1 ? "" : "s") + " at a time");
    if (Number.isInteger(l.token_budget)) {
      parts.push(l.token_budget.toLocaleString() + " tokens" + (l.budget_period ? " per " + str(l.budget_period) : ""));
    }
    ui.limits.textContent = parts.length ? "Your limits: " + parts.join(", ") + "." : "No usage limits on your account.";
  }

  function bindEvents() {
    ui.send.addEventListener("click", sendPrompt);
    ui.stop.addEventListener("click", () => { stopGeneration(); ui.prompt.focus(); }); // Stop is about to vanish
    ui.newChat.addEventListener("click", newChat);
    ui.prompt.addEventListener("input", autoGrow);
    ui.prompt.addEventListener("keydown", (e) => {
      // Enter sends, Shift+Enter is a newline; never while an IME is composing a character.
      if (e.key !== "Enter" || e.shiftKey || e.isComposing || e.keyCode === 229) return;
      e.preventDefault();
      sendPrompt();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape" || e.isComposing) return; // Escape may just cancel an IME composition
      if (state.gen) { e.preventDefault(); stopGeneration(); }
      else if (document.body.matches(".sidebar-open, .settings-open")) { closeDrawers(); ui.prompt.focus(); }
    });
    ui.thread.addEventListener("scroll", () => {
      const t = ui.thread;
      state.stickToBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 48;
    });

    ui.model.addEventListener("change", () => {
      state.current.model = ui.model.value;
      settings.model = ui.model.value; // new chats start with the last model picked
      saveSettings();
      if (isSaved(state.current)) saveNow(state.current);
    });
    ui.system.addEventListener("input", () => {
      state.current.system = ui.system.value;
      settings.system = ui.system.value; // new chats start with the last system prompt
      saveSettings();
      if (isSaved(state.current)) saveSoon(state.current);
    });
    ui.tools.addEventListener("input", () => {
      state.current.tools = ui.tools.value;
      settings.tools = ui.tools.value; // new chats offer the last tools given
      saveSettings();
      showToolsHelp();
      if (isSaved(state.current)) saveSoon(state.current);
    });
    ui.toolChoice.addEventListener("change", () => {
      state.current.toolChoice = settings.toolChoice = toolChoice(ui.toolChoice.value);
      saveSettings();
      if (isSaved(state.current)) saveNow(state.current);
    });
    const onTemperature = (source) => () => {
      settings.temperature = clampTemperature(source.value);
      (source === ui.temperature ? ui.temperatureRange : ui.temperature).value = String(settings.temperature);
      saveSettings();
    };
    ui.temperature.addEventListener("input", onTemperature(ui.temperature));
    ui.temperatureRange.addEventListener("input", onTemperature(ui.temperatureRange));
    ui.temperature.addEventListener("change", showSettings); // show the clamped value once typing is done
    ui.maxTokens.addEventListener("input", () => { settings.maxTokens = cleanMaxTokens(ui.maxTokens.value); saveSettings(); });
    ui.maxTokens.addEventListener("change", showSettings);

    ui.toggleSidebar.addEventListener("click", () => setDrawer("sidebar", !document.body.classList.contains("sidebar-open")));
    ui.toggleSettings.addEventListener("click", () => setDrawer("settings", !document.body.classList.contains("settings-open")));
    ui.closeSettings.addEventListener("click", () => { setDrawer("settings", false); ui.toggleSettings.focus(); });
    ui.backdrop.addEventListener("click", closeDrawers);
    window.addEventListener("pagehide", () => { if (state.unsaved.size) saveNow(); });
    if (ON_SERVER) window.addEventListener("focus", () => { if (!state.gen) refreshList(); });
    else window.addEventListener("storage", onOtherTab);
    ui.search.addEventListener("input", () => {
      clearTimeout(state.searchTimer);
      state.searchTimer = setTimeout(search, ON_SERVER ? 250 : 0);
    });
  }

  // Another tab of this user wrote or deleted a conversation: take it as it is there.
  // Except the one this tab is answering in, which only this tab writes meanwhile.
  function onOtherTab(e) {
    if (!e.key || !e.key.startsWith(CONVERSATION_PREFIX)) return;
    const id = e.key.slice(CONVERSATION_PREFIX.length);
    if (state.gen && state.gen.conv.id === id) return;
    const conv = e.newValue === null ? null : parseConversation(e.newValue, e.key, true);
    if (e.newValue !== null && !conv) return; // unreadable: keep what we have
    const old = state.conversations.find((c) => c.id === id);
    state.conversations = state.conversations.filter((c) => c !== old);
    if (conv) state.conversations = [...state.conversations, conv].sort(newestFirst);
    if (old && state.current === old) {
      state.current = conv || state.conversations[0] || makeConversation();
      renderAll();
    } else {
      renderConversationList();
    }
  }

  function init() {
    for (const id of config.models) ui.model.append(new Option(id, id));
    if (!config.models.length) {
      ui.model.append(new Option("No models available", ""));
      ui.model.disabled = true;
      setStatus("No models are available to you. Ask an administrator.", "error");
    }
    ui.historyNote.textContent = ON_SERVER ? "Conversations are saved on the server and follow you to any browser."
      : "Conversations are kept in this browser only.";
    showSettings();
    renderLimits();
    bindEvents();
    autoGrow();
    if (ON_SERVER) {
      state.current = makeConversation();
      renderAll();
      connect();
      moveLocalConversations().then(refreshList).then(async (ok) => {
        if (!ok) setStatus("Your conversations could not be loaded from the server.", "error");
        else if (!state.current.messages.length && state.conversations.length && !state.gen) {
          await openConversation(state.conversations[0]); // reopen the latest
        }
        ui.app.dataset.history = "ready";
      });
    } else {
      state.conversations = loadConversations();
      state.current = state.conversations[0] || makeConversation(); // reopen the latest
      renderAll();
      connect();
      ui.app.dataset.history = "ready";
    }
  }

  init();
})();
