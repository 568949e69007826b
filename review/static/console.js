// Keyboard shortcuts for the console: n next item, c claim, f/r/e/s decide, u show images, ? help (Esc closes).
(function () {
  "use strict";
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }
  function press(selector) {
    var el = document.querySelector(selector);
    if (!el) { return false; }
    if (el.tagName === "FORM") { el.requestSubmit(); } else { el.click(); }
    return true;
  }
  var help = document.getElementById("shortcut-help");
  function toggleHelp() {
    if (!help) { return false; }
    if (help.open) { help.close(); } else { help.showModal(); }
    return true;
  }
  var closer = document.getElementById("shortcut-help-close");
  if (closer) { closer.addEventListener("click", function () { help.close(); }); }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) { return; }
    var key = event.key.toLowerCase();
    var done = false;
    if (key === "?") { done = toggleHelp(); }
    else if (help && help.open) { return; }  // the modal help takes no other key; Esc closes it natively
    else if (key === "n") { done = press("#next-form"); }
    else if (key === "u") { document.body.classList.toggle("unblur"); done = true; }
    else if (/^[cfres]$/.test(key)) { done = press('button[data-key="' + key + '"]'); }
    if (done) { event.preventDefault(); }
  });
})();
