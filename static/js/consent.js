// The grant form (templates/consent/grant_form.html): show only the part of the form that the
// chosen scope uses, and tick de-identification for research and education, as the portal
// will do anyway. Without this script every part shows and the server does the same.
(function () {
  "use strict";
  var form = document.querySelector(".consent-form");
  if (!form) { return; }
  var DEIDENTIFIED = ["HRESCH", "HEDUC"];

  function checked(name) {
    var input = form.querySelector('input[name="' + name + '"]:checked');
    return input ? input.value : "";
  }

  function showScope() {
    var scope = checked("scope");
    form.querySelectorAll("[data-scope-part]").forEach(function (part) {
      part.hidden = part.getAttribute("data-scope-part") !== scope;
    });
  }

  function forceDeidentify() {
    var box = form.querySelector('input[name="deidentify"]');
    if (!box) { return; }
    var forced = DEIDENTIFIED.indexOf(checked("purpose")) !== -1;
    if (forced) { box.checked = true; }
    box.disabled = forced;
    // A disabled box is not sent; the server forces it for these purposes regardless.
  }

  form.addEventListener("change", function (event) {
    if (event.target.name === "scope") { showScope(); }
    if (event.target.name === "purpose") { forceDeidentify(); }
  });
  showScope();
  forceDeidentify();
}());
