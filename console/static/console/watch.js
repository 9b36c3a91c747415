/* The job page: follows GET /jobs/{id}/events (EventSource, the session cookie
   authenticates it) and shows the answer as Claude writes it, the tool calls,
   and a transcription's progress. When the job ends the page reloads to show
   the rendered result. */
"use strict";
(function () {
  const kit = window.consoleKit;
  const job = document.getElementById("job");
  if (!job) return;
  const finished = job.dataset.finished === "true";
  const live = document.getElementById("live");
  const tools = document.getElementById("tools");
  const toolsSection = document.getElementById("tools-section");
  const status = document.getElementById("status");
  const bar = document.getElementById("tprogress");
  let sawPartial = false;

  function appendText(text) {
    if (live && text) live.textContent += text;
  }

  function compact(input) {
    if (!input || typeof input !== "object") return "";
    const main = input.file_path || input.path || input.pattern || input.command || input.url || input.description;
    const text = typeof main === "string" ? main : JSON.stringify(input);
    return text.length > 120 ? text.slice(0, 117) + "…" : text;
  }

  function addTool(block) {
    const li = document.createElement("li");
    const name = document.createElement("code");
    name.textContent = block.name;
    li.appendChild(name);
    li.appendChild(document.createTextNode(" " + compact(block.input)));
    li.id = "tool-" + block.id;
    tools.appendChild(li);
    toolsSection.hidden = false;
  }

  function markToolResult(block) {
    const li = document.getElementById("tool-" + block.tool_use_id);
    if (li) li.classList.add(block.is_error ? "tool-error" : "tool-done");
  }

  function setStatus(name) {
    status.dataset.status = name;
    const label = kit.t("status:" + name);
    status.textContent = label.startsWith("status:") ? name : label;
    status.className = "status s-" + name;
  }

  function running() {
    if (!finished && status.dataset.status === "pending") setStatus("running");
  }

  function onEvent(type, data) {
    if (type === "stream_event") {
      const inner = data.event || {};
      const delta = inner.delta || {};
      if (inner.type === "content_block_delta" && delta.type === "text_delta") {
        sawPartial = true;
        appendText(delta.text);
      }
    } else if (type === "assistant") {
      const blocks = (data.message || {}).content || [];
      blocks.forEach((b) => {
        if (b.type === "tool_use") addTool(b);
        else if (b.type === "text" && !sawPartial) appendText(b.text);
      });
    } else if (type === "user") {
      const blocks = (data.message || {}).content;
      if (Array.isArray(blocks)) blocks.filter((b) => b.type === "tool_result").forEach(markToolResult);
    } else if (type === "progress" && bar) {
      running();
      if (typeof data.percent === "number") {
        bar.value = data.percent;
        document.getElementById("tpercent").textContent = Math.round(data.percent) + " %";
      }
      if (data.message) document.getElementById("tmessage").textContent = data.message;
    } else if (type === "system" && data.subtype === "init") {
      running();
    }
  }

  const cancel = document.getElementById("cancel-form");
  const source = new EventSource("/jobs/" + job.dataset.id + "/events");
  const types = ["stream_event", "assistant", "user", "result", "system", "progress", "error"];
  types.forEach((type) => source.addEventListener(type, (e) => {
    try { onEvent(type, JSON.parse(e.data)); } catch (_) { /* a malformed event is skipped */ }
  }));
  source.addEventListener("done", (e) => {
    source.close();
    if (live) live.setAttribute("aria-busy", "false");
    if (!finished) {
      const result = JSON.parse(e.data);
      if (cancel) cancel.hidden = true;
      setStatus(result.status);
      // The final page renders the answer's Markdown, the files and the usage.
      window.setTimeout(() => window.location.reload(), 300);
    }
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (with Last-Event-ID); a finished page needs nothing more.
    if (finished) source.close();
  });

  if (cancel) {
    cancel.addEventListener("submit", (e) => {
      if (!window.confirm(kit.t("Cancel this job?"))) e.preventDefault();
    });
  }
})();
