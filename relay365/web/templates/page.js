(function(){var box=document.getElementById('auto');
setInterval(function(){var a=document.activeElement;
if(box&&box.checked&&!(a&&(a.tagName==='INPUT'||a.tagName==='BUTTON')))location.reload();},{{ refresh_ms }});
document.querySelectorAll('form[data-confirm]').forEach(function(f){f.addEventListener('submit',
function(e){if(!confirm(f.dataset.confirm))e.preventDefault();});});})();
