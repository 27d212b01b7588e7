'use strict';

const escapeHtml = require('escape-html');

exports.greeting = () => `${escapeHtml('yarn-workspaces')} ok\n`;
