"""Synthetic weld images: generators (weldray.synthetic.base registry), the quality gate and the generate job."""
