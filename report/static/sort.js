// The sortable slice table; `#sort=<key>-<asc|desc>` in the URL sorts on load (and is kept up to date).
(function () {
  var table = document.getElementById('slices');
  if (table) {
    var state = {key: null, dir: 1};
    function sortBy(key, dir) {
      var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
      var col = headers.findIndex(function (h) { return h.dataset.key === key; });
      if (col < 0) return;
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === '' || y === '') return (x === '') - (y === '');  // undefined scores always last
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return c * dir;
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
      headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
      headers[col].setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      state = {key: key, dir: dir};
      history.replaceState(null, '', '#sort=' + key + '-' + (dir > 0 ? 'asc' : 'desc'));
    }
    table.tHead.addEventListener('click', function (e) {
      var h = e.target.closest('th');
      if (!h) return;
      // Scores start best-first; names start A-Z.
      var first = h.dataset.key === 'slice' ? 1 : -1;
      sortBy(h.dataset.key, state.key === h.dataset.key ? -state.dir : first);
    });
    var m = /#sort=([^-]+)-(asc|desc)/.exec(decodeURIComponent(location.hash));
    if (m) sortBy(m[1], m[2] === 'asc' ? 1 : -1);
  }
  document.documentElement.setAttribute('data-ready', '1');
})();
