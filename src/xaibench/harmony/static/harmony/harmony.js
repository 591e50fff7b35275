// Keyboard answers and response time for the labelling page.
(function () {
  "use strict";
  var form = document.getElementById("answer");
  if (!form) { return; }
  var started = performance.now();
  var sent = false;
  var keys = {
    "1": "left", "ArrowLeft": "left",
    "2": "neither", "ArrowDown": "neither", "n": "neither", "N": "neither",
    "3": "right", "ArrowRight": "right"
  };
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
    document.getElementById("rt").value = String(Math.round(performance.now() - started));
  });
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) { return; }
    var side = keys[event.key];
    if (side) {
      var button = form.querySelector('button[data-key="' + side + '"]');
      if (button) { event.preventDefault(); button.click(); }
      return;
    }
    if (event.key === "b" || event.key === "B" || event.key === "Backspace") {
      var previous = document.getElementById("previous");
      if (previous) { event.preventDefault(); window.location.href = previous.href; }
    }
  });
})();
