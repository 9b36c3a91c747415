/* Shared by the console's pages: the CSRF token for writes, translated strings. */
"use strict";
window.consoleKit = {
  csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  },
  t(key) {
    const node = document.getElementById("i18n");
    const strings = node ? JSON.parse(node.textContent) : {};
    return strings[key] || key;
  },
  errorText(xhrStatus, body) {
    try {
      const data = JSON.parse(body);
      const e = data.error || {};
      return (e.message || JSON.stringify(data)) + (e.field ? " (" + e.field + ")" : "");
    } catch (_) {
      return "HTTP " + xhrStatus;
    }
  },
  size(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  },
};
