/* EdgeKite tracker: <script defer src="http://EDGE:8080/t.js" data-site="site-1"></script>
   data-respect-dnt="true|false" overrides the edge's http.tracker_respect_dnt. */
(function () {
  'use strict';
  var w = window, d = document, n = navigator, l = location;
  var me = d.currentScript;
  if (!me || !me.src || (w.edgekite && w.edgekite.track)) return;
  var origin = new URL(me.src, l.href).origin;
  var site = me.getAttribute('data-site') || l.hostname;
  // The edge renders its default over __EK_RESPECT_DNT__ (true/false).
  var attr = me.getAttribute('data-respect-dnt');
  var respect = attr === null ? '__EK_RESPECT_DNT__' !== 'false' : attr === 'true';
  var optOut = respect && (n.doNotTrack === '1' || w.doNotTrack === '1' || n.globalPrivacyControl === true);

  // A UUIDv7 (the envelope spec's advice): its first 48 bits are the time, so the edge's
  // event_id index takes page views in order instead of at random places.
  function uuid() {
    var c = w.crypto, b = new Uint8Array(16), i, h = '', t = Date.now();
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (i = 0; i < 16; i++) b[i] = Math.random() * 256;
    for (i = 5; i >= 0; i--) { b[i] = t % 256; t = Math.floor(t / 256); }
    b[6] = (b[6] & 15) | 112;
    b[8] = (b[8] & 63) | 128;
    for (i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1) + ([3, 5, 7, 9].indexOf(i) >= 0 ? '-' : '');
    return h;
  }

  function send(type, data) {
    if (optOut) return;
    var body = JSON.stringify({
      event_id: uuid(),
      observed_at: Date.now(),
      source: {type: 'browser', id: site},
      event: {category: 'web', type: type, data: data || {}},
      privacy: {pii: false}
    });
    try {
      fetch(origin + '/api/events', {
        method: 'POST', keepalive: true, credentials: 'omit',
        headers: {'Content-Type': 'application/json'}, body: body
      })['catch'](function () {});
    } catch (e) { /* never break the page */ }
  }

  var UTM = ['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content'];
  var lastPath = null, lastHref = d.referrer;

  function pageView() {
    var path = l.pathname + l.search;
    if (path === lastPath) return;
    var data = {
      url: path,
      hostname: l.hostname,
      referrer: lastHref || '',
      title: d.title,
      user_agent: n.userAgent,
      screen: w.screen ? screen.width + 'x' + screen.height : '',
      language: n.language || ''
    };
    var q = new URLSearchParams(l.search);
    for (var i = 0; i < UTM.length; i++) if (q.get(UTM[i])) data[UTM[i]] = q.get(UTM[i]);
    lastPath = path;
    lastHref = l.href; // next SPA view's referrer, as a full load's would be
    send('page_view', data);
  }

  // SPA navigation
  var push = history.pushState;
  history.pushState = function () {
    var r = push.apply(this, arguments);
    setTimeout(pageView, 0); // after the title changes
    return r;
  };
  w.addEventListener('popstate', function () { setTimeout(pageView, 0); });

  w.edgekite = {
    track: function (type, data) {
      if (typeof type !== 'string' || !type) return;
      send(type, Object.assign({url: l.pathname + l.search, hostname: l.hostname, user_agent: n.userAgent}, data));
    }
  };

  if (d.prerendering) d.addEventListener('prerenderingchange', pageView, {once: true});
  else pageView();
})();
