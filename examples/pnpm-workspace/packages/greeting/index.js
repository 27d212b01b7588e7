'use strict';

const escapeHtml = require('escape-html');

/** What `GET /` of the web app answers. */
exports.greeting = () => 'pnpm-workspace ok\n';

/** An HTML greeting for a visitor's name, escaped. */
exports.hello = (name) => `<p>Hello, ${escapeHtml(name)}!</p>\n`;
