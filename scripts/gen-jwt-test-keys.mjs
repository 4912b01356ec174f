// Generates the signing keys the JWT tests use and writes them, with their public JWKs,
// to tests/testdata/jwt-keys.json. Test-only keys: regenerate freely with
//   node scripts/gen-jwt-test-keys.mjs
// (Pre-generated so that `cargo test` needs no key generation, which is slow for RSA in
// debug builds, and no extra crypto crates.)
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const specs = {
  'rsa-1': ['rsa', { modulusLength: 2048 }],
  'rsa-2': ['rsa', { modulusLength: 2048 }],
  'ec-p256': ['ec', { namedCurve: 'P-256' }],
  'ec-p384': ['ec', { namedCurve: 'P-384' }],
  'ed25519': ['ed25519', {}],
};

const out = {};
for (const [name, [type, options]] of Object.entries(specs)) {
  const { privateKey, publicKey } = generateKeyPairSync(type, options);
  out[name] = {
    private_pem: privateKey.export({ format: 'pem', type: 'pkcs8' }),
    public_pem: publicKey.export({ format: 'pem', type: 'spki' }),
    public_jwk: publicKey.export({ format: 'jwk' }),
  };
}
const file = fileURLToPath(new URL('../tests/testdata/jwt-keys.json', import.meta.url));
writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${file}`);
