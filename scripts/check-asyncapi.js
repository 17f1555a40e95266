// Validates an AsyncAPI document with @asyncapi/parser and prints, as one JSON line, the
// problems found and every event `type` its event schemas name.
//   NODE_PATH=.tools/node/node_modules node scripts/check-asyncapi.js docs/asyncapi.yaml
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

async function main() {
  const source = fs.readFileSync(process.argv[2], 'utf8');
  const { document, diagnostics } = await new Parser().parse(source);
  // Severity 0 is an error; warnings (1) and hints are reported but do not fail.
  const errors = diagnostics.filter((d) => d.severity === 0).map((d) => `${d.path.join('.')}: ${d.message}`);
  const warnings = diagnostics.filter((d) => d.severity === 1).map((d) => `${d.path.join('.')}: ${d.message}`);
  const types = [];
  if (document) {
    const schemas = document.json().components.schemas;
    const collect = (schema) => {
      if (!schema) return;
      if (schema.$ref) return collect(schemas[schema.$ref.split('/').pop()]);
      for (const variant of schema.oneOf || []) {
        const t = (variant.properties || {}).type || {};
        if (t.const) types.push(t.const);
        for (const e of t.enum || []) types.push(e);
      }
    };
    for (const message of Object.values(document.json().components.messages)) {
      const items = ((message.payload || {}).items || {});
      // The parser resolves references; an unresolved one is looked up by name.
      const envelope = items.$ref ? schemas[items.$ref.split('/').pop()] : items;
      for (const part of (envelope && envelope.allOf) || []) collect(part);
    }
  }
  console.log(JSON.stringify({ valid: errors.length === 0 && !!document, errors, warnings, types: [...new Set(types)].sort() }));
}

main().catch((e) => {
  console.log(JSON.stringify({ valid: false, errors: [String(e)], warnings: [], types: [] }));
});
