// oversight view: the only script (no inline scripts: the CSP forbids them).
// Filter forms leave empty fields out of the URL, so a shared link holds only the filters
// in use, and a changed select applies at once.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form.filters").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("input, select").forEach(function (field) {
        if (!field.value) { field.disabled = true; }
      });
    });
    form.querySelectorAll("select").forEach(function (select) {
      if (select.multiple) { return; }
      select.addEventListener("change", function () { form.requestSubmit(); });
    });
  });
});
