// A pending or running job's admin page: every two seconds, ask the admin's live/ view for the
// status and the events written since the last one shown, and append them. Once the job ends, show
// its final status for a moment, then reload once so result, usage, times and files show.
// Polling stops for good when the job is gone (404) or the session no longer lets us in.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var RETRY_MS = 5000;
  var RELOAD_AFTER_MS = 1500;

  function start() {
    var status = document.getElementById("job-live");
    var note = document.getElementById("job-live-note");
    var table = document.getElementById("job-events");
    if (!status || !table) return;
    var body = table.tBodies[0];
    function say(text) {
      if (note) note.textContent = "(" + text + ")";
    }
    function lastSeq() {
      var rows = body.querySelectorAll("tr.job-event");
      return rows.length ? parseInt(rows[rows.length - 1].dataset.seq, 10) : -1;
    }
    function poll() {
      fetch(status.dataset.url + "?after=" + lastSeq(), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          if (response.status === 404) throw new Error("stop: the job no longer exists");
          // An expired session is redirected to the login page (or refused): asking again will not help.
          if (response.status === 403 || response.redirected) {
            throw new Error("stop: signed out, reload the page to sign in");
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          data.events.forEach(function (html) { body.insertAdjacentHTML("beforeend", html); });
          status.textContent = data.status;
          if (data.active) {
            say("refreshing");
            setTimeout(poll, POLL_MS);
          } else {
            say("finished, reloading to show the outcome");
            setTimeout(function () { window.location.reload(); }, RELOAD_AFTER_MS);
          }
        })
        .catch(function (error) {
          var message = String((error && error.message) || error);
          if (message.indexOf("stop: ") === 0) {
            say("refresh stopped: " + message.slice(6));
          } else {
            say("refresh failed (" + message + "), retrying");
            setTimeout(poll, RETRY_MS);
          }
        });
    }
    setTimeout(poll, POLL_MS);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
