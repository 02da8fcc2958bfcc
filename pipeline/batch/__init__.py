"""The application: YAML config, cluster, runner, report, plots and the gmm-pipeline command."""
