// Live lists refresh themselves (htmx polling), but never under a person's hands:
// a list marked data-keep-while-editing is not refreshed while one of its fields
// has the focus or holds text not yet submitted (a release form, an override reason).
document.addEventListener("htmx:confirm", function (evt) {
  var box = evt.target.closest ? evt.target.closest("[data-keep-while-editing]") : null;
  if (!box) { return; }
  var active = document.activeElement;
  var editing = active && active !== document.body && box.contains(active);
  var typed = Array.prototype.some.call(
    box.querySelectorAll("input[type=text], input:not([type]), textarea"),
    function (field) { return field.value !== ""; });
  if (editing || typed) { evt.preventDefault(); }
});
