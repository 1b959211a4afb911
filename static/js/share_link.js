// Share-link pages (templates/sharing/link_form.html, link_created.html): show the facility-name
// field only when "not listed" is chosen, and copy the link to the clipboard. Without this
// script the name field always shows and the link can be selected and copied by hand.
(function () {
  "use strict";

  var facility = document.querySelector("[data-share-facility] select");
  var nameField = document.querySelector("[data-share-facility-name]");
  if (facility && nameField) {
    var showName = function () {
      nameField.hidden = facility.value !== "not-listed";
    };
    facility.addEventListener("change", showName);
    showName();
  }

  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy-target"));
    var row = button.closest("[data-copy-row]");
    var status = row ? row.querySelector("[data-copy-status]") : null;
    if (!source || !navigator.clipboard) { return; }
    if (row) { row.hidden = false; }
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        if (status) { status.textContent = "Copied."; }
      }, function () {
        if (status) { status.textContent = "Could not copy: select the link and copy it."; }
      });
    });
  });
}());
