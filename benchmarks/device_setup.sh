# Source on the lent GPU machine (Python 3.12 + torch preinstalled, no network): installs the
# wheels carried in .whl/ (detectron2 + its pure-Python dependencies) into /tmp/site.
mkdir -p /tmp/site
python3 -c "import zipfile, glob; zipfile.ZipFile(glob.glob('.whl/sal_detectron2*.whl')[0]).extractall('/tmp/site')"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v sal_detectron2)
export PYTHONPATH=/tmp/site:$PWD
