// Lodestar console: the tasks page and the task page, talking to the API like any client.
// The API key lives in this tab's session storage and goes out as the bearer key (never in a URL); a share link's
// expires and sig (in the page's own URL) stand in for it on the read-only task page.
"use strict";
(() => {
  const KEY = "lodestar.key";
  const STATUSES = ["queued", "running", "paused", "completed", "failed", "cancelled", "timed_out"];
  const ENDED = new Set(["completed", "failed", "cancelled", "timed_out"]);
  const $ = (id) => document.getElementById(id);
  const main = $("main");
  const page = main.dataset.page;
  const shared = main.dataset.shared === "true";
  const shareQuery = main.dataset.shareQuery || "";
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const key = () => sessionStorage.getItem(KEY);

  function withShare(path) {
    return shared ? path + (path.includes("?") ? "&" : "?") + shareQuery : path;
  }

  function headers(json) {
    const h = {};
    if (!shared && key()) h.Authorization = "Bearer " + key();
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(method, path, body) {
    const resp = await fetch(withShare(path), {
      method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401 && !shared) signOut("The API refused the key: sign in again.");
    if (!resp.ok) {
      const err = new Error((data && data.error && data.error.message) || resp.statusText || String(resp.status));
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // --- signing in ---------------------------------------------------------------------------------------------
  function signOut(reason) {
    sessionStorage.removeItem(KEY);
    showSignIn(reason || "");
  }

  function showSignIn(reason) {
    for (const id of ["tasks-view", "task-view"]) if ($(id)) $(id).hidden = true;
    $("sign-out").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = reason;
    $("api-key").focus();
  }

  function setUpSignIn(start) {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("api-key").value.trim());
      try {
        await api("GET", "/agent/tenant");
      } catch (err) {
        sessionStorage.removeItem(KEY);
        $("signin-error").textContent = "Sign-in failed: " + err.message;
        return;
      }
      $("api-key").value = "";
      $("signin").hidden = true;
      start();
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
  }

  function boot(start) {
    setUpSignIn(start);
    if (shared || key()) start();
    else showSignIn("");
  }

  // --- the tasks page -------------------------------------------------------------------------------------------
  function tasksPage() {
    let cursor = null;
    let started = false;
    let lastFingerprint = null;

    function filterQuery() {
      const q = new URLSearchParams();
      for (const name of ["status", "kind", "model", "batch_id"]) {
        const value = $("filters").elements[name].value.trim();
        if (value) q.set(name, value);
      }
      const meta = $("filter-metadata").value.trim();
      if (meta.includes("=")) {
        const [k, ...rest] = meta.split("=");
        q.set("metadata." + k.trim(), rest.join("=").trim());
      }
      return q;
    }

    function filterBody() {
      const q = filterQuery();
      const f = {};
      for (const [name, value] of q) {
        if (name.startsWith("metadata.")) (f.metadata = f.metadata || {})[name.slice(9)] = value;
        else f[name] = value;
      }
      if (f.status && ENDED.has(f.status)) return null;  // nothing active to cancel
      return f;
    }

    function row(task) {
      const link = el("a", {href: "/console/tasks/" + encodeURIComponent(task.task_id), text: task.task_id});
      const progress = el("progress", {max: "1", value: String(task.progress || 0),
        "aria-label": `Progress of ${task.task_id}`});
      return el("tr", {"data-task-id": task.task_id},
        el("td", {}, link),
        el("td", {}, el("span", {class: "status status-" + task.status, text: task.status})),
        el("td", {class: "instruction", text: (task.instruction || "").split("\n")[0].slice(0, 120)}),
        el("td", {}, progress, ` ${task.steps_taken}/${task.max_steps}`),
        el("td", {text: (task.created_at || "").replace("T", " ").slice(0, 19)}));
    }

    async function loadList(append) {
      const q = filterQuery();
      q.set("limit", "50");
      if (append && cursor) q.set("cursor", cursor);
      let data;
      try {
        data = await api("GET", "/agent/tasks?" + q.toString());
      } catch (err) {
        $("list-message").textContent = "Could not list tasks: " + err.message;
        return;
      }
      const rows = $("task-rows");
      const fingerprint = JSON.stringify(data.data.map((t) => [t.task_id, t.status, t.steps_taken]));
      if (!append && fingerprint === lastFingerprint) {  // unchanged: keep the rows (and the focus) as they are
        await loadBatches(data.data);
        return;
      }
      lastFingerprint = append ? null : fingerprint;
      const focused = document.activeElement && rows.contains(document.activeElement) ?
        document.activeElement.closest("tr").dataset.taskId : null;
      if (!append) rows.replaceChildren();
      for (const task of data.data) rows.append(row(task));
      if (focused) {  // a refresh must not take the keyboard user's place away
        const again = rows.querySelector(`tr[data-task-id="${CSS.escape(focused)}"] a`);
        if (again) again.focus();
      }
      cursor = data.next_cursor;
      $("more").hidden = !data.has_more;
      await loadBatches(data.data);
    }

    async function loadBatches(tasks) {
      const ids = [...new Set(tasks.map((t) => t.batch_id).filter(Boolean))].slice(0, 10);
      const box = $("batches");
      const parts = [];
      for (const id of ids) {
        try {
          const b = await api("GET", "/agent/batches/" + encodeURIComponent(id));
          const label = `Batch ${id}: ${b.ended} of ${b.total} ended`;
          parts.push(el("div", {class: "batch"}, el("span", {text: label}),
            el("progress", {max: String(b.total), value: String(b.ended), "aria-label": label})));
        } catch (err) { /* an expired batch: nothing to show */ }
      }
      box.replaceChildren(...parts);
    }

    async function loadCounts() {
      try {
        const info = await api("GET", "/agent/tenant");
        const counts = info.counts || {};
        $("counts").replaceChildren(...STATUSES.filter((s) => s in counts).map((s) =>
          el("li", {class: "status-" + s, "data-status": s}, el("strong", {text: String(counts[s])}), " " + s)));
      } catch (err) { /* shown by the list */ }
    }

    async function refreshLoop() {
      for (;;) {
        await sleep(2000);
        if (!key()) return;
        if (document.visibilityState !== "hidden") {
          await loadCounts();
          if (!cursor || $("task-rows").children.length <= 50) await loadList(false);
        }
      }
    }

    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      cursor = null;
      lastFingerprint = null;
      loadList(false);
    });
    $("more").addEventListener("click", () => loadList(true));
    $("bulk-cancel").addEventListener("click", async () => {
      const f = filterBody();
      if (f === null) {
        $("list-message").textContent = "Finished tasks cannot be cancelled.";
        return;
      }
      if (!window.confirm("Cancel every queued, running or paused task that matches the filters?")) return;
      try {
        const r = await api("POST", "/agent/tasks/cancel", {filter: f});
        $("list-message").textContent = `Cancelled ${r.cancelled.length} task(s).`;
      } catch (err) {
        $("list-message").textContent = "Bulk cancel failed: " + err.message;
      }
      loadList(false);
      loadCounts();
    });
    $("start-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target.elements;
      const body = {instruction: form.instruction.value, kind: form.kind.value, priority: form.priority.value};
      if (form.agent_type.value) body.agent_type = form.agent_type.value;
      if (form.model.value.trim()) body.model = form.model.value.trim();
      if (form.start_url.value.trim()) body.start_url = form.start_url.value.trim();
      const out = $("start-result");
      try {
        const r = await api("POST", "/agent/tasks", body);
        out.replaceChildren("Started ", el("a", {href: "/console/tasks/" + r.task_id, id: "started-link",
          text: r.task_id}), ` (${r.status}).`);
        loadList(false);
        loadCounts();
      } catch (err) {
        out.textContent = "Could not start the task: " + err.message;
      }
    });

    boot(async () => {
      $("tasks-view").hidden = false;
      $("sign-out").hidden = false;
      await Promise.all([loadCounts(), loadList(false)]);
      if (!started) {
        started = true;
        refreshLoop();
      }
    });
  }

  // --- the task page --------------------------------------------------------------------------------------------
  function describeAction(a) {
    if (!a) return "";
    switch (a.type) {
      case "type": return `type "${a.text || ""}"`;
      case "key": return `key ${a.keys}`;
      case "navigate": return `navigate to ${a.url}`;
      case "scroll": return `scroll ${(a.dy || 0) >= 0 ? "down" : "up"} ${Math.abs(a.dy || a.dx || 0)}px`;
      case "wait": return a.text ? `wait for "${a.text}"` : `wait ${a.seconds || 0}s`;
      default:
        if (a.target) return `${a.type} ${a.target.by} "${a.target.name}"`;
        if (a.x !== undefined) return `${a.type} at (${a.x}, ${a.y})`;
        return a.type + (a.text ? ` ${a.text}` : "");
    }
  }

  function taskPage() {
    const taskId = main.dataset.taskId;
    const steps = [];  // step events, in order
    let status = "";
    let following = true;  // the slider follows the newest step
    let ended = false;
    let started = false;

    function showStep(index) {
      const ev = steps[index];
      if (!ev) return;
      const img = $("screenshot");
      const src = ev.screenshot_url || ev.screenshot;
      if (src) {
        img.src = src;
        img.alt = `Screenshot at step ${ev.step}` + (ev.url ? ` (${ev.url})` : "");
        img.hidden = false;
        $("no-screenshot").hidden = true;
      }
      $("replay").value = String(index);
      $("replay-position").textContent = `Step ${ev.step} (${index + 1} of ${steps.length})`;
      for (const li of $("step-log").children) li.classList.toggle("current", li.dataset.index === String(index));
    }

    function logStep(ev) {
      const index = steps.length;
      steps.push(ev);
      const results = ev.results || [];
      const failed = results.find((r) => !r.ok);
      const who = ev.human ? "human" : "agent";
      const li = el("li", {"data-index": String(index), "data-step": String(ev.step), class: "step " + who},
        el("button", {type: "button", class: "link", text: `Step ${ev.step}`,
          "aria-label": `Show step ${ev.step}`}),
        el("span", {class: "who", text: who}),
        el("span", {class: "what", text: (ev.actions || []).map(describeAction).join(", ")}),
        el("span", {class: failed ? "bad" : "ok", text: failed ? `failed: ${failed.error}` : "ok"}));
      if (ev.thought) li.append(el("div", {class: "thought", text: ev.thought}));
      if (ev.url) li.append(el("div", {class: "url", text: ev.url}));
      for (const m of ev.messages || []) li.append(el("div", {class: "msg", text: "message: " + m}));
      if (ev.usage) {
        const u = ev.usage;
        const cost = u.cost_usd === null || u.cost_usd === undefined ? "" : ` · $${Number(u.cost_usd).toFixed(4)}`;
        li.append(el("div", {class: "usage", text: `tokens ${u.total_tokens || 0}${cost}`}));
      }
      li.querySelector("button").addEventListener("click", () => {
        following = index === steps.length - 1;
        showStep(index);
      });
      $("step-log").append(li);
      $("replay").max = String(steps.length - 1);
      if (following) showStep(index);
    }

    function logNote(text, cls) {
      $("step-log").append(el("li", {class: "note " + (cls || "")}, el("span", {text})));
    }

    function setStatus(s) {
      status = s;
      $("status").textContent = s;
      $("status").className = "status status-" + s;
      ended = ENDED.has(s);
      if (!shared) {
        const paused = s === "paused";
        $("takeover-form").hidden = !paused;
        $("screen").classList.toggle("takeover", paused);
        $("pause").disabled = s !== "running";
        $("resume").disabled = !paused;
        $("cancel").disabled = ended;
      }
    }

    async function refreshTask() {
      try {
        const t = await api("GET", "/agent/tasks/" + encodeURIComponent(taskId));
        setStatus(t.status);
        $("progress").value = t.progress || 0;
        $("steps-taken").textContent = `${t.steps_taken} of ${t.max_steps} steps`;
        $("message").textContent = t.message || "";
        $("instruction").textContent = t.instruction || "";
        const result = t.result === null || t.result === undefined ? "" :
          (typeof t.result === "string" ? t.result : JSON.stringify(t.result));
        $("result").textContent = t.error ? `${result} (error: ${t.error})` : result;
        return true;
      } catch (err) {
        $("task-error").textContent = err.status === 404 ? "No such task (or it is not yours)." :
          "Could not load the task: " + err.message;
        return false;
      }
    }

    function onEvent(ev) {
      if (ev.type === "step") logStep(ev);
      else if (ev.type === "status") {
        setStatus(ev.status);
        logNote(`status: ${ev.status}` + (ev.question ? ` (question: ${ev.question})` : ""), "status");
      } else if (ev.type === "message") logNote(`message from the user: ${ev.content}`, "message");
      else if (ev.type === "end") {
        setStatus(ev.status);
        logNote(`ended: ${ev.status} (exit code ${ev.exit_code})` + (ev.error ? ` — ${ev.error}` : ""), "end");
      } else if (ev.type === "blocked") logNote(`blocked: ${ev.url} (${ev.reason})`, "blocked");
      refreshTask();
    }

    async function follow() {
      let after = 0;
      for (;;) {
        try {
          const resp = await fetch(withShare(`/agent/tasks/${encodeURIComponent(taskId)}/events?after=${after}`),
            {headers: headers(false)});
          if (!resp.ok) {
            if (resp.status === 401 && !shared) signOut("The API refused the key: sign in again.");
            return;
          }
          const reader = resp.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const {value, done} = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, {stream: true});
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const frame = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const data = frame.split("\n").filter((l) => l.startsWith("data:"))
                .map((l) => l.slice(5).trim()).join("\n");
              if (!data) continue;
              const ev = JSON.parse(data);
              if (ev.seq <= after) continue;
              after = ev.seq;
              onEvent(ev);
            }
          }
        } catch (err) {
          console.warn("event stream:", err);
        }
        if (ended) return;
        await sleep(1000);  // the stream dropped: attach again after the last event seen
      }
    }

    async function control(verb, body) {
      const out = $("control-result");
      try {
        const r = await api("POST", `/agent/tasks/${encodeURIComponent(taskId)}/${verb}`, body);
        out.textContent = `${verb}: ${r.status}`;
        if (r.status) setStatus(r.status);
      } catch (err) {
        out.textContent = `${verb} failed: ${err.message}`;
      }
    }

    async function act(action) {
      const out = $("takeover-result");
      out.textContent = `Sending ${describeAction(action)}…`;
      try {
        const r = await api("POST", `/agent/tasks/${encodeURIComponent(taskId)}/actions`, action);
        out.textContent = `Step ${r.step}: ${describeAction(action)}: ` +
          (r.result.ok ? "done" : `failed (${r.result.error})`);
        following = true;
      } catch (err) {
        out.textContent = `${describeAction(action)} failed: ${err.message}`;
      }
    }

    function setUpControls() {
      $("pause").addEventListener("click", () => control("pause"));
      $("resume").addEventListener("click", () => control("resume"));
      $("cancel").addEventListener("click", () => {
        if (window.confirm("Cancel this task?")) control("cancel");
      });
      $("message-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const text = $("message-text").value;
        control("messages", {message: text}).then(() => { $("message-text").value = ""; });
      });
      $("share").addEventListener("click", async () => {
        try {
          const r = await api("POST", `/agent/tasks/${encodeURIComponent(taskId)}/share`, {});
          $("share-link").href = r.url;
          $("share-link").textContent = r.url;
          $("share-output").hidden = false;
        } catch (err) {
          $("control-result").textContent = "Share failed: " + err.message;
        }
      });
      const img = $("screenshot");
      img.addEventListener("click", (event) => {
        if (status !== "paused" || !img.naturalWidth) return;
        const box = img.getBoundingClientRect();
        const x = Math.round((event.clientX - box.left) * img.naturalWidth / box.width);
        const y = Math.round((event.clientY - box.top) * img.naturalHeight / box.height);
        act({type: "click", x: Math.min(x, img.naturalWidth - 1), y: Math.min(y, img.naturalHeight - 1)});
      });
      $("takeover-type").addEventListener("click", () => act({type: "type", text: $("takeover-text").value}));
      $("takeover-press").addEventListener("click", () => act({type: "key", keys: $("takeover-key").value}));
      $("takeover-scroll-up").addEventListener("click", () => act({type: "scroll", dy: -400}));
      $("takeover-scroll-down").addEventListener("click", () => act({type: "scroll", dy: 400}));
      $("takeover-click").addEventListener("click", () => act({type: "click",
        x: Number($("takeover-x").value), y: Number($("takeover-y").value)}));
      $("screen").addEventListener("keydown", (event) => {  // keys pressed on the focused screen go to the task
        if (status !== "paused" || event.target !== $("screen")) return;
        if (event.key.length === 1 && !event.ctrlKey && !event.metaKey && !event.altKey) {
          act({type: "type", text: event.key});
        } else if (["Enter", "Backspace", "Tab", "Escape", "ArrowUp", "ArrowDown", "ArrowLeft",
          "ArrowRight", "PageUp", "PageDown", "Home", "End", "Delete"].includes(event.key)) {
          if (event.key === "Tab") return;  // keep Tab for moving focus
          act({type: "key", keys: event.key});
        } else return;
        event.preventDefault();
      });
    }

    $("replay").addEventListener("input", () => {
      const index = Number($("replay").value);
      following = index === steps.length - 1;
      showStep(index);
    });

    boot(async () => {
      $("task-view").hidden = false;
      if (!shared) $("sign-out").hidden = false;
      if (!shared && !started) setUpControls();
      if (started) return;
      started = true;
      if (await refreshTask()) follow();
    });
  }

  if (page === "tasks") tasksPage();
  else if (page === "task") taskPage();
})();
