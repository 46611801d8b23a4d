#!/usr/bin/env bash
# Create (or resume) the study once, before the worker array starts: validates the space
# and the data, caches the data under $ATML_ARTIFACTS/cache and creates the tables and the
# study. `--workers 0` starts no trials here; the array tasks of workers.sbatch run them.
#
# Run it on a login node, or submit it and make the workers wait for it:
#   jid=$(sbatch --parsable deploy/slurm/create_study.sh)
#   sbatch --dependency=afterok:$jid deploy/slurm/workers.sbatch
#
#SBATCH --job-name=atml-create-study
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=atml-create-study-%j.out
set -euo pipefail

# Read by every atml command: the study database and the shared artifact folder.
: "${ATML_STORAGE:?set ATML_STORAGE to the study database, e.g. postgresql+psycopg://atml@dbhost:5432/atml}"
: "${ATML_ARTIFACTS:?set ATML_ARTIFACTS to a folder every node mounts at the same path}"
# This script's own settings (not read by atml itself).
SPACE="${SPACE:-search_spaces/afib.yaml}"   # the search space YAML
STUDY="${STUDY:-afib}"                      # the study name the workers join
DATA="${DATA:-}"                            # data path overriding data.path (empty: the space's own)
VENV="${VENV:-}"                            # a virtual environment with atml installed (empty: as is)

if [ -n "$VENV" ]; then
  . "$VENV/bin/activate"
fi

exec atml search --space "$SPACE" --study "$STUDY" --workers 0 --no-progress ${DATA:+--data "$DATA"}
