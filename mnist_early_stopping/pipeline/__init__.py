"""The ground every stage stands on: params, paths, how a stage runs and fails, atomic files, code deps."""
