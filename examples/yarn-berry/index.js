'use strict';

const polka = require('polka');

const port = Number(process.env.PORT || 3000);

polka()
  .get('/', (req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end('yarn-berry ok\n');
  })
  .get('/healthz', (req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ ok: true }));
  })
  // No host argument: listen on all interfaces, as a pod must.
  .listen(port, (err) => {
    if (err) throw err;
    console.log(`yarn-berry listening on :${port}`);
  });
