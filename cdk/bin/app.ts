/** CDK entry point: `npx cdk synth` / `npx cdk deploy`. The configuration is lifeboat.config.json, or the file $LIFEBOAT_CONFIG names. */
import { App } from 'aws-cdk-lib';
import { loadConfig } from '../../core/config.ts';
import { LifeboatStack } from '../lib/lifeboat-stack.ts';

const app = new App();
new LifeboatStack(app, 'Lifeboat', { config: loadConfig() });
