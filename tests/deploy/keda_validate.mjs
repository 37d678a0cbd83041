// Validate KEDA ScaledObjects with @kubernetes-models/keda (validators generated from KEDA's Go API types).
// Usage: node keda_validate.mjs <node_modules dir>  < JSON array of ScaledObjects
// Prints one line per invalid object and exits 1 if any; prints "ok <n>" and exits 0 otherwise.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const { ScaledObject } = await import(
  pathToFileURL(join(modules, "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js")).href
);
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  try {
    new ScaledObject(object).validate();
  } catch (error) {
    failed += 1;
    console.log(`${object?.metadata?.name}: ${error.message}`);
  }
}
if (failed === 0) console.log(`ok ${objects.length}`);
process.exit(failed ? 1 : 0);
