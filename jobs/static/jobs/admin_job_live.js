// A pending or running job's admin page: every two seconds, ask the admin's live/ view for the
// status and the events written since the last one shown; append them; reload once the job ends
// (so result, usage, times and files show).
(function () {
  "use strict";
  function start() {
    var status = document.getElementById("job-live");
    var table = document.getElementById("job-events");
    if (!status || !table) return;
    var body = table.tBodies[0];
    function lastSeq() {
      var rows = body.querySelectorAll("tr.job-event");
      return rows.length ? parseInt(rows[rows.length - 1].dataset.seq, 10) : -1;
    }
    function poll() {
      fetch(status.dataset.url + "?after=" + lastSeq(), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
        .then(function (data) {
          status.textContent = data.status;
          data.events.forEach(function (html) { body.insertAdjacentHTML("beforeend", html); });
          if (data.active) {
            setTimeout(poll, 2000);
          } else {
            window.location.reload();
          }
        })
        .catch(function () { setTimeout(poll, 5000); });
    }
    setTimeout(poll, 2000);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
