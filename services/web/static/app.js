// Small progressive enhancements; every page works without this file.
"use strict";

// Actions are POSTs confirmed in the UI.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
