"""transferlab entry point: python run.py [-m] key=value ...

The same as the installed ``transferlab run [-m] key=value ...``; the Hydra
application is ``transferlab.app`` (config from conf/ and experiments/).
"""

from transferlab.app import main

if __name__ == "__main__":
    main()
