"""python -m services.orchestrator"""

from services.orchestrator.app import create_orchestrator
from shared.process import run_service

if __name__ == "__main__":
    run_service("orchestrator", create_orchestrator)
