/* The chat page: each message is one POST /v1/chat/completions (stream: true)
   in the conversation's compat session (X-Request-ID names it), so Claude Code
   resumes the session and keeps the context. Sessions are listed by the page
   and deleted with DELETE /v1/sessions/{id}. */
"use strict";
(function () {
  const kit = window.consoleKit;
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const turns = document.getElementById("turns");
  const error = form.querySelector(".error");
  const button = form.querySelector('button[type="submit"]');
  let session = turns.dataset.session || "console-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);

  function turn(kind, label) {
    const li = document.createElement("li");
    li.className = "turn " + kind;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = label;
    const body = document.createElement("div");
    li.append(who, body);
    turns.appendChild(li);
    return body;
  }

  async function send(text) {
    turn("user", kit.t("You")).textContent = text;
    const answer = turn("claude", "Claude");
    answer.setAttribute("aria-busy", "true");
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": kit.csrf(),
        "X-Request-ID": session,
      },
      body: JSON.stringify({
        model: document.getElementById("chat-model").value,
        messages: [{ role: "user", content: text }],
        stream: true,
      }),
    });
    if (!response.ok) {
      answer.remove();
      throw new Error(kit.errorText(response.status, await response.text()));
    }
    session = response.headers.get("X-Session-ID") || session;
    const url = new URL(window.location.href);
    url.searchParams.set("session", session);
    window.history.replaceState(null, "", url);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        block.split("\n").forEach((line) => {
          if (!line.startsWith("data:")) return;
          const payload = line.slice(5).trim();
          if (payload === "[DONE]") return;
          const chunk = JSON.parse(payload);
          if (chunk.error) throw new Error(chunk.error.message || "error");
          const delta = ((chunk.choices || [])[0] || {}).delta || {};
          if (delta.content) answer.textContent += delta.content;
        });
      }
    }
    answer.setAttribute("aria-busy", "false");
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    error.hidden = true;
    button.disabled = true;
    input.value = "";
    try {
      await send(text);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
      input.focus();
    }
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });

  document.querySelectorAll(".delete-session").forEach((btn) => {
    btn.addEventListener("click", async () => {
      if (!window.confirm(kit.t("Delete this conversation?"))) return;
      const id = btn.dataset.session;
      const response = await fetch("/v1/sessions/" + encodeURIComponent(id), {
        method: "DELETE",
        credentials: "same-origin",
        headers: { "X-CSRFToken": kit.csrf() },
      });
      if (response.ok || response.status === 404) {
        const url = new URL(window.location.href);
        if (url.searchParams.get("session") === id) url.searchParams.delete("session");
        window.location.assign(url);
      } else {
        error.textContent = kit.errorText(response.status, await response.text());
        error.hidden = false;
      }
    });
  });
})();
