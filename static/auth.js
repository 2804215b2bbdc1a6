// auth.js — owns the API token in the browser: kept for this tab's session
// only (sessionStorage, never localStorage, never a URL or a cookie), the
// `Authorization: Bearer` header every REST call carries, and the WebSocket
// subprotocols that carry it on /ws (a browser cannot give a WebSocket a
// header): `calo.v1, calo.bearer.<token as base64url without padding>`.
// The server selects `calo.v1`, never the bearer entry. No DOM here.

import { readJSON, writeJSON } from './util.js';

const TOKEN_KEY = 'calo.apiToken';
const SUBPROTOCOL = 'calo.v1';

export const token = () => {
  const value = readJSON('sessionStorage', TOKEN_KEY, null);
  return typeof value === 'string' && value ? value : null;
};

export function setToken(value) {
  writeJSON('sessionStorage', TOKEN_KEY, value || null);
}

function base64url(text) {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The subprotocols to offer on /ws. */
export function webSocketProtocols() {
  const t = token();
  return t ? [SUBPROTOCOL, `calo.bearer.${base64url(t)}`] : [SUBPROTOCOL];
}

// Whoever shows the token prompt (app.js) listens here. A 401 is reported only if
// it answered the token kept now: one sent before a new token was entered is stale.
let unauthorized = () => {};
export function onUnauthorized(fn) { unauthorized = fn; }
export function reportUnauthorized(err, sentToken) {
  if (sentToken === token()) unauthorized(err);
}
