// Generates the private JWKs the client-authentication unit tests sign with and writes them
// to tests/testdata/client-jwks.json. Test-only keys, registered nowhere; regenerate freely:
//   node scripts/gen-client-jwks.mjs
// (Integration tests against the real AS generate fresh keys at run time instead.)
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const specs = {
  'rsa-2048': ['rsa', { modulusLength: 2048 }],
  'rsa-1024': ['rsa', { modulusLength: 1024 }],
  'ec-p256': ['ec', { namedCurve: 'P-256' }],
  'ec-p384': ['ec', { namedCurve: 'P-384' }],
  'ec-p521': ['ec', { namedCurve: 'P-521' }],
  'ed25519': ['ed25519', {}],
};

const out = {};
for (const [name, [type, options]] of Object.entries(specs)) {
  const { privateKey } = generateKeyPairSync(type, options);
  out[name] = privateKey.export({ format: 'jwk' });
}
const file = fileURLToPath(new URL('../tests/testdata/client-jwks.json', import.meta.url));
writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${file}`);
