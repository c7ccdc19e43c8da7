// Job form: when the recipe changes, start the parameters field from that recipe's
// defaults (data-params), unless the operator already typed something of their own.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-job-recipe]");
  if (!select) return;
  const field = select.form.querySelector("input[name=params]");
  const option = select.selectedOptions[0];
  const known = Array.from(select.options, (o) => o.dataset.params || "{}");
  if (field && (field.value.trim() === "" || known.includes(field.value))) {
    field.value = (option && option.dataset.params) || "{}";
  }
});
