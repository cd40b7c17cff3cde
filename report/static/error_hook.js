// Runs first: a script error, console.error or a request the page's CSP blocks is shown on the page and
// recorded on <html data-errors>, so a person sees it and a headless test can assert on it.
(function () {
  var errors = [];
  function report(text) {
    errors.push(String(text));
    document.documentElement.setAttribute('data-errors', JSON.stringify(errors));
    var box = document.getElementById('page-errors');
    if (box) { box.hidden = false; box.textContent = errors.join('\n'); }
  }
  window.addEventListener('error', function (e) { report('error: ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { report('rejection: ' + e.reason); });
  document.addEventListener('securitypolicyviolation', function (e) { report('blocked request: ' + e.blockedURI); });
  var original = console.error;
  console.error = function () { report('console.error: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); };
})();
