// keyswap developer portal: progressive enhancement only. Everything works without this file;
// it shows "Copy" buttons next to keys and commands (navigator.clipboard needs a secure context).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (!navigator.clipboard) { return; }
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(target.textContent.trim()).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 2000);
      });
    });
  });
});
