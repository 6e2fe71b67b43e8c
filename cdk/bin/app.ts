/** CDK entry point: `npx cdk synth` / `npx cdk deploy`. */
import { App } from 'aws-cdk-lib';
import { LifeboatStack } from '../lib/lifeboat-stack.ts';
import { defaultConfig } from '../config.ts';

const app = new App();
new LifeboatStack(app, 'Lifeboat', { moverGroups: defaultConfig.moverGroups });
