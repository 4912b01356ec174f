// make-client-keys.mjs — the gateway's client credentials for the nginx client-auth tests,
// made fresh for each run (nothing of it is committed):
//
//   node tests/nginx/make-client-keys.mjs DIR [PKI_DIR]
//
// writes DIR/clients.json (the gateway's side: secrets and private JWKs, read by nginx's
// init_worker_by_lua and the Kong stand-in) and DIR/as-clients.json (the AS's side:
// AS_EXTRA_CLIENTS for tests/node/as-server.mjs, public keys only):
//   gw-hs256, gw-hs512   client_secret_jwt (HS256 / HS512)
//   gw-es256, gw-rs256, gw-eddsa  private_key_jwt (ES256 P-256 with kid, RS256 2048 with
//                        kid, EdDSA Ed25519 without kid)
//   gw-none              none
//   gw-signed            client_secret_basic, signed introspection answers (RFC 9701, RS256)
// With PKI_DIR (the test PKI made by scripts/test-lua.sh), also DIR/tls-as-clients.json for
// the https AS: gw-tls (tls_client_auth, CA-issued certificate with SAN DNS gateway.test)
// and gw-self (self_signed_tls_client_auth with PKI_DIR/self.crt).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

const [dir, pki] = process.argv.slice(2);
if (!dir) throw new Error('usage: make-client-keys.mjs DIR');

const jwk = (type, options, kid) => {
  const { privateKey } = generateKeyPairSync(type, options);
  const k = privateKey.export({ format: 'jwk' });
  return kid ? { ...k, kid } : k;
};
const publicOf = (k) => {
  const { d, p, q, dp, dq, qi, ...pub } = k; // eslint-disable-line no-unused-vars
  return pub;
};
const secret = (bytes) => randomBytes(bytes).toString('base64url');

const gateway = {
  hs256: secret(32),
  hs512: secret(64),
  es256: jwk('ec', { namedCurve: 'P-256' }, 'es-k1'),
  rs256: jwk('rsa', { modulusLength: 2048 }, 'rs-k1'),
  eddsa: jwk('ed25519', {}),
  signed: secret(24),
};
const jwtClient = (id, method, alg, extra) => ({ client_id: id, token_endpoint_auth_method: method, token_endpoint_auth_signing_alg: alg, ...extra });
const as = [
  jwtClient('gw-hs256', 'client_secret_jwt', 'HS256', { client_secret: gateway.hs256 }),
  jwtClient('gw-hs512', 'client_secret_jwt', 'HS512', { client_secret: gateway.hs512 }),
  jwtClient('gw-es256', 'private_key_jwt', 'ES256', { jwks: { keys: [publicOf(gateway.es256)] } }),
  jwtClient('gw-rs256', 'private_key_jwt', 'RS256', { jwks: { keys: [publicOf(gateway.rs256)] } }),
  jwtClient('gw-eddsa', 'private_key_jwt', 'EdDSA', { jwks: { keys: [publicOf(gateway.eddsa)] } }),
  { client_id: 'gw-none', token_endpoint_auth_method: 'none' },
  {
    client_id: 'gw-signed',
    client_secret: gateway.signed,
    token_endpoint_auth_method: 'client_secret_basic',
    introspection_signed_response_alg: 'RS256',
  },
];
writeFileSync(`${dir}/clients.json`, JSON.stringify(gateway));
writeFileSync(`${dir}/as-clients.json`, JSON.stringify(as));
if (pki) {
  writeFileSync(`${dir}/tls-as-clients.json`, JSON.stringify([
    { client_id: 'gw-tls', token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_san_dns: 'gateway.test' },
    {
      client_id: 'gw-self',
      token_endpoint_auth_method: 'self_signed_tls_client_auth',
      _self_signed_cert_pem: readFileSync(`${pki}/self.crt`, 'utf8'),
    },
  ]));
}
