/**
 * CDK entry point: `npx cdk synth` / `npx cdk deploy`. The configuration is
 * lifeboat.config.json, or the file $LIFEBOAT_CONFIG names; a bad value stops synth with
 * a message naming each bad key and its value. Region and account come from the CLI's
 * credentials (CDK_DEFAULT_REGION/ACCOUNT); $LIFEBOAT_STACK_NAME names the stack.
 * cdk-nag (AwsSolutions) validates the result; an unacknowledged finding fails synth.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
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
// cdk-nag's AwsSolutions pack runs on every synth and deploy: a finding without a written
// acknowledgment (cdk/lib/nag.ts) stops it.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
new LifeboatStack(app, process.env.LIFEBOAT_STACK_NAME || 'Lifeboat', {
  config,
  description: 'Lifeboat: VM backup control plane (Step Functions, Lambda, DynamoDB catalog, S3 repository)',
  ...(process.env.CDK_DEFAULT_ACCOUNT ? { env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION } } : {}),
});
