// The error hook runs first, so a failing script below it is visible in the page (and to the tests).
window.addEventListener('error', function (e) {
  var box = document.getElementById('js-errors');
  var msg = (e && e.message) ? e.message : 'resource failed to load';
  if (box) { var li = document.createElement('div'); li.textContent = msg; box.appendChild(li); }
  document.documentElement.setAttribute('data-js-errors', String((+document.documentElement.getAttribute('data-js-errors') || 0) + 1));
}, true);
