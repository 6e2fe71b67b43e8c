/**
 * CDK entry point: `npx cdk synth` / `npx cdk deploy`. The configuration is
 * lifeboat.config.json, or the file $LIFEBOAT_CONFIG names; a bad value stops synth with
 * a message naming each bad key and its value. Region and account come from the CLI's
 * credentials (CDK_DEFAULT_REGION/ACCOUNT); $LIFEBOAT_STACK_NAME names the stack.
 */
import { App } from 'aws-cdk-lib';
import { ConfigError, loadConfig, type LifeboatConfig } from '../../core/config.ts';
import { LifeboatStack } from '../lib/lifeboat-stack.ts';

let config: LifeboatConfig;
try {
  config = loadConfig();
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}

const app = new App();
new LifeboatStack(app, process.env.LIFEBOAT_STACK_NAME || 'Lifeboat', {
  config,
  description: 'Lifeboat: VM backup control plane (Step Functions, Lambda, DynamoDB catalog, S3 repository)',
  ...(process.env.CDK_DEFAULT_ACCOUNT ? { env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION } } : {}),
});
