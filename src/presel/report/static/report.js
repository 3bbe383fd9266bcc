(function () {
  function num(td) {
    var t = td.textContent.replace(/[,%\s✓]/g, '');
    var v = parseFloat(t);
    return isNaN(v) ? null : v;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        rows.sort(function (a, b) {
          var x = num(a.cells[col]), y = num(b.cells[col]);
          if (x !== null && y !== null) return dir * (x - y);
          return dir * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var secs = document.querySelectorAll('section[data-section]');
  var ok = document.querySelectorAll('section[data-status="ok"]').length;
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth === 0) broken++;
  }
  var root = document.documentElement;
  root.setAttribute('data-sections', String(secs.length));
  root.setAttribute('data-sections-ok', String(ok));
  root.setAttribute('data-images', String(imgs.length));
  root.setAttribute('data-broken-images', String(broken));
  root.setAttribute('data-loaded', 'yes');
})();
