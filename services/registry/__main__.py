"""python -m services.registry"""

from services.registry.app import create_registry
from shared.process import run_service

if __name__ == "__main__":
    run_service("registry", create_registry)
