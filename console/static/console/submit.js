/* The submit page: tabs, drag and drop, and POST /jobs by XMLHttpRequest so the
   upload's progress can be shown (fetch has no upload progress events). */
"use strict";
(function () {
  const kit = window.consoleKit;

  // Tabs (arrow keys move between them, as the ARIA tab pattern expects).
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  function select(tab) {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    });
    tab.focus();
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        e.preventDefault();
        select(tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length]);
      }
    });
  });

  // Drop zones keep their own list of files (an <input type=file> cannot be appended to).
  document.querySelectorAll(".drop").forEach((zone) => {
    const input = zone.querySelector('input[type="file"]');
    const list = zone.querySelector(".files");
    const multiple = zone.dataset.multiple === "true";
    zone.files = [];
    function show() {
      list.innerHTML = "";
      zone.files.forEach((file, i) => {
        const li = document.createElement("li");
        li.textContent = file.name + " (" + kit.size(file.size) + ") ";
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "link";
        remove.textContent = kit.t("Remove");
        remove.setAttribute("aria-label", kit.t("Remove") + " " + file.name);
        remove.addEventListener("click", () => { zone.files.splice(i, 1); show(); });
        li.appendChild(remove);
        list.appendChild(li);
      });
    }
    function add(files) {
      const incoming = Array.from(files);
      zone.files = multiple ? zone.files.concat(incoming) : incoming.slice(0, 1);
      show();
    }
    input.addEventListener("change", () => { add(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (e) => { e.preventDefault(); add(e.dataTransfer.files); });
  });

  document.querySelectorAll(".job-form").forEach((form) => {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const error = form.querySelector(".error");
      const button = form.querySelector('button[type="submit"]');
      error.hidden = true;
      const body = new FormData();
      form.querySelectorAll("input[name], textarea[name], select[name]").forEach((el) => {
        if (el.name !== "output") body.append(el.name, el.value);
      });
      const outputs = Array.from(form.querySelectorAll('input[name="output"]:checked')).map((el) => el.value);
      if (form.dataset.kind === "transcription") body.append("output", JSON.stringify(outputs));
      form.querySelectorAll(".drop").forEach((zone) => {
        zone.files.forEach((file) => body.append(zone.dataset.field, file, file.name));
      });

      const upload = form.querySelector(".upload");
      const bar = upload.querySelector("progress");
      const pct = upload.querySelector(".pct");
      upload.hidden = false;
      bar.value = 0;
      button.disabled = true;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/jobs");
      xhr.setRequestHeader("X-CSRFToken", kit.csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) {
          const p = Math.round((ev.loaded / ev.total) * 100);
          bar.value = p;
          pct.textContent = p + " %";
        }
      });
      xhr.addEventListener("load", () => {
        if (xhr.status === 202) {
          bar.value = 100;
          pct.textContent = "100 %";
          const id = JSON.parse(xhr.responseText).data.id;
          window.location.assign("/console/jobs/" + id);
          return;
        }
        button.disabled = false;
        error.textContent = kit.errorText(xhr.status, xhr.responseText);
        error.hidden = false;
      });
      xhr.addEventListener("error", () => {
        button.disabled = false;
        error.textContent = kit.t("The upload failed: the connection was lost.");
        error.hidden = false;
      });
      xhr.send(body);
    });
  });
})();
