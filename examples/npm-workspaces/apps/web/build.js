'use strict';

// The build step, as a bundler or code generator would run it: it uses the local
// workspace package, and writes dist/ (ignored by git) for the server to serve.
const fs = require('node:fs');
const { greeting } = require('@acme/greeting');

fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/greeting.txt', greeting());
