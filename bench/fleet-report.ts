/** The fleet benches' cost table: usage per VM-backup and its price per 1,000 at list prices. */
import { memoryGb, price, type PerVmBackup, type Prices } from './fleet-usage.ts';

const orchestration = (c: Record<string, number>) => c['Step Functions']! + c.Lambda! + c.DynamoDB! + c.KMS!;
const out = (s: string) => process.stdout.write(s);

function printUsage(u: PerVmBackup, label: string): void {
  out(`\nPer VM-backup (${label}):\n| figure | per VM-backup |\n|---|---:|\n`);
  out(`| state transitions | ${u.transitions.toFixed(1)} |\n| Lambda invocations | ${u.lambdaInvocations.toFixed(1)} |\n`);
  if (u.lambdaGbSecondsAlone !== undefined)
    out(`| Lambda GB-seconds, each invocation at its function's mean duration alone (bench/fleet-solo.ts) | ${u.lambdaGbSecondsAlone.toFixed(4)} |\n`);
  out(`| Lambda GB-seconds at wall time in the loaded stack process | ${u.lambdaGbSeconds.toFixed(3)} |\n`);
  if (u.lambdaGbSecondsFloor !== undefined) out(`| Lambda GB-seconds, each invocation at its function's shortest | ${u.lambdaGbSecondsFloor.toFixed(4)} |\n`);
  out(`| DynamoDB read / write units | ${u.dynamodbReadUnits.toFixed(1)} / ${u.dynamodbWriteUnits.toFixed(1)} |\n`);
  out(
    `| S3 requests | ${Object.entries(u.s3)
      .map(([k, n]) => `${k} ${n.toFixed(1)}`)
      .join(', ')} |\n| KMS calls | ${u.kmsCalls} |\n`,
  );
}

function printByFunction(u: PerVmBackup, prices: Prices): void {
  if (!u.lambdaByFunction) return;
  out(
    '\nLambda by function, per VM-backup:\n| function | MiB | invocations | GB-s alone | GB-s at wall time | GB-s at its shortest | $ per 1,000 (alone) |\n|---|---:|---:|---:|---:|---:|---:|\n',
  );
  for (const [id, f] of Object.entries(u.lambdaByFunction).sort((a, b) => b[1].gbSeconds - a[1].gbSeconds)) {
    const gbs = f.gbSecondsAlone ?? f.gbSeconds;
    out(
      `| ${id} | ${memoryGb(id) * 1024} | ${f.invocations.toFixed(2)} | ${f.gbSecondsAlone?.toFixed(4) ?? '-'} | ${f.gbSeconds.toFixed(4)} | ${f.gbSecondsFloor.toFixed(4)} | ${(1000 * (f.invocations * prices.lambdaPerRequest + gbs * prices.lambdaArmPerGbSecond)).toFixed(4)} |\n`,
    );
  }
}

/**
 * Prints `u` and its price. The headline prices Lambda at each function's duration alone
 * when the bench measured it (bench/fleet-solo.ts says why that is the estimate of AWS's
 * bill), with the wall-time price (overstated by the shared process) and the shortest-
 * invocation price (a floor) beside it.
 */
export function printCost(u: PerVmBackup, prices: Prices, label: string): void {
  printUsage(u, label);
  const alone = u.lambdaGbSecondsAlone !== undefined ? price({ ...u, lambdaGbSeconds: u.lambdaGbSecondsAlone }, prices) : undefined;
  const wall = price(u, prices);
  const headline = alone ?? wall;
  out(`\nCost per 1,000 VM-backups at ${prices.region} list prices of ${prices.date} (bench/aws-prices.json):\n| service | $ |\n|---|---:|\n`);
  for (const [k, v] of Object.entries(headline)) out(`| ${k}${k === 'Lambda' && alone ? ' (at durations alone)' : ''} | ${v.toFixed(4)} |\n`);
  out(`| orchestration (Step Functions, Lambda, DynamoDB, KMS) | ${orchestration(headline).toFixed(4)} (target 0.50) |\n`);
  if (alone) out(`| orchestration, Lambda at wall time in the loaded stack process (overstated) | ${orchestration(wall).toFixed(4)} |\n`);
  if (u.lambdaGbSecondsFloor !== undefined)
    out(
      `| orchestration, Lambda at each function's shortest invocation (a floor) | ${orchestration(price({ ...u, lambdaGbSeconds: u.lambdaGbSecondsFloor }, prices)).toFixed(4)} |\n`,
    );
  printByFunction(u, prices);
}
