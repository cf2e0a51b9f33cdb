// What a site's bundler makes of Uppy: @uppy/core and @uppy/xhr-upload as
// globals, for tests/api/browser_chunked.rs (bundled there with esbuild).
import Uppy from '@uppy/core';
import XHRUpload from '@uppy/xhr-upload';

window.Uppy = Uppy;
window.XHRUpload = XHRUpload;
